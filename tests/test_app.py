def test_app_has_the_five_tabs():
    from workbench.ui.app import TABS, build_app

    app = build_app()
    labels = [block.label for block in app.blocks.values() if type(block).__name__ == "Tab"]
    assert labels == list(TABS) == ["Dataset", "Memory planner", "LoRA", "Training", "Inference"]


def test_core_never_imports_gradio():
    import pathlib
    import re

    root = pathlib.Path(__file__).resolve().parents[1] / "workbench"
    offenders = [str(p) for p in root.rglob("*.py") if "ui" not in p.relative_to(root).parts
                 and re.search(r"^\s*(import gradio|from gradio)", p.read_text(), re.M)]
    assert offenders == []


def test_launch_defaults_are_safe():
    from launch import parse_args

    args = parse_args([])
    assert args.host == "127.0.0.1" and args.share is False and args.model == "demo"
