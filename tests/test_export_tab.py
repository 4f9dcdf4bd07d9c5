"""The Export tab's handlers (plain functions) and its wiring in the app, through gradio_client."""

import json
import shutil
from pathlib import Path

import pytest

from workbench.session import Workbench


@pytest.fixture()
def runs(trained_run, tmp_path, monkeypatch):
    """A runs folder with the trained run and an unfinished one (killed after checkpoint-20)."""
    monkeypatch.setattr("workbench.runs.runs_root", lambda: tmp_path / "runs")
    monkeypatch.setattr("workbench.paths.home", lambda: tmp_path / "home")  # where default exports go
    done = tmp_path / "runs" / "colours"
    shutil.copytree(trained_run.output_dir, done)
    killed = tmp_path / "runs" / "killed"
    shutil.copytree(trained_run.output_dir / "checkpoint-20", killed / "checkpoint-20")
    shutil.copy(trained_run.output_dir / "run.yaml", killed / "run.yaml")
    return done, killed


def test_run_list_fills_the_folder_and_a_new_output_name(runs, tmp_path):
    from workbench.ui import export_tab as tab

    done, killed = runs
    choices, value = tab.runs_menu(Workbench(), None)
    assert value == str(done) and {path for _, path in choices} == {str(done), str(killed)}
    adapter, out, note = tab.choose_run(str(done), "merged")
    assert adapter == str(done) and out == str(tmp_path / "home" / "exports" / "colours-merged") and note == ""
    (tmp_path / "home" / "exports" / "colours-merged").mkdir(parents=True)
    assert tab.choose_run(str(done), "merged")[1].endswith("colours-merged-2")  # never an existing folder
    assert "interrupted" in tab.choose_run(str(killed), "adapter")[2]
    dtype, out = tab.mode_changed("adapter", str(done))
    assert dtype["interactive"] is False and out.endswith("colours-adapter")


def test_check_shows_size_and_disk_and_export_writes_the_folder(runs, tmp_path):
    from workbench.ui import export_tab as tab

    done, _ = runs
    out = tmp_path / "out" / "merged"
    summary = tab.check(str(done), "merged", "bf16", "", str(out))
    assert "Writes" in summary and "free on that disk" in summary and "1 shard(s), dtype bf16" in summary
    assert not out.exists()
    seen = []
    result = tab.export_now(Workbench(), str(done), "merged", "bf16", "", str(out), progress=lambda f, desc="": seen.append(f))
    assert result.startswith("**Exported** to") and "AutoModelForImageTextToText" in result
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    assert seen[0] == 0 and seen[-1] == 1.0 and seen == sorted(seen)
    # Export pressed again: the folder is there, nothing is overwritten, and the message says so
    # (seen in the browser: a double press turned the "Exported" line into a bare refusal)
    again = tab.export_now(Workbench(), str(done), "merged", "bf16", "", str(out), progress=lambda *a, **k: None)
    assert again.startswith(f"**Already exported** to `{out}`") and "already holds files" in again
    assert "nothing was overwritten" in again and f'from_pretrained("{out}")' in again
    as_adapter = tab.export_now(Workbench(), str(done), "adapter", "auto", "", str(out), progress=lambda *a, **k: None)
    assert as_adapter.startswith("⚠️") and "already holds files" in as_adapter  # a merged folder is not this adapter export
    (out / "workbench-export.json").unlink()  # the card still names the run: its prose is not what is read
    without = tab.export_now(Workbench(), str(done), "merged", "bf16", "", str(out), progress=lambda *a, **k: None)
    assert without.startswith("⚠️") and "already holds files" in without


def test_refusals_are_warnings_not_tracebacks(runs, tmp_path):
    from workbench.ui import export_tab as tab

    _, killed = runs
    assert tab.check("", "adapter", "auto", "", str(tmp_path / "x")).startswith("⚠️ No run chosen")
    message = tab.export_now(Workbench(), str(killed), "merged", "auto", "", str(tmp_path / "x"), progress=lambda *a, **k: None)
    assert message.startswith("⚠️") and "checkpoint-20" in message and not (tmp_path / "x").exists()
    assert "No output folder" in tab.check(str(killed / "checkpoint-20"), "adapter", "auto", "", "")


def test_export_tab_through_the_app(runs, tmp_path):
    from gradio_client import Client

    from workbench.ui.app import build_app

    done, _ = runs
    app = build_app()
    app.queue().launch(prevent_thread_lock=True, server_name="127.0.0.1", quiet=True)
    try:
        client = Client(app.local_url, verbose=False)
        out = tmp_path / "via-app"
        summary = client.predict(str(done), "adapter", "auto", "", str(out), api_name="/export_check")
        assert "Export the adapter" in summary
        result = client.predict(str(done), "adapter", "auto", "", str(out), api_name="/export_run")
        assert result.startswith("**Exported**") and (Path(out) / "adapter_model.safetensors").is_file()
    finally:
        app.close()


def test_a_second_export_in_the_same_app_is_refused_while_one_runs():
    from workbench.errors import UserError

    session = Workbench()
    with session.exporting():
        with pytest.raises(UserError, match="already running"):
            with session.exporting():
                pass
    with session.exporting():  # released
        pass
