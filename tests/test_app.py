def test_app_has_the_six_tabs():
    from workbench.ui.app import TABS, build_app

    app = build_app()
    labels = [block.label for block in app.blocks.values() if type(block).__name__ == "Tab"]
    assert labels == list(TABS) == ["Dataset", "Memory planner", "LoRA", "Training", "Inference", "Export"]


def test_core_never_imports_gradio():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "workbench"
    offenders = [str(p) for p in root.rglob("*.py") if "ui" not in p.relative_to(root).parts
                 and re.search(r"^\s*(import gradio|from gradio)", p.read_text(), re.M)]
    assert offenders == []


def test_plots_start_without_an_empty_frame():
    # Gradio 6.31's plots keep categorical axes (and no marks) for good when their first
    # value is an empty, untyped frame: every plot starts empty (None) and is only ever
    # sent frames with rows (see training_tab._or_skip, planner_tab.on_plan).
    from workbench.ui.app import build_app

    plots = [b for b in build_app().blocks.values() if type(b).__name__ in ("BarPlot", "LinePlot", "ScatterPlot")]
    assert len(plots) >= 4
    assert all(p.value is None for p in plots), [(p.title, p.value) for p in plots]
