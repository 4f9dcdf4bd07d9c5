"""Issue 27, the run half: hostile or careless input never runs a command, loses a run, or crashes."""

import os
import subprocess
import sys

import pytest


def cli(capsys, *args) -> tuple[int, str, str]:
    """``python -m workbench ...`` in this process: (exit code, stdout, stderr)."""
    from workbench.cli.main import main

    code = main([*map(str, args)])
    out, err = capsys.readouterr()
    return code, out, err


# ---- 1. the node scripts of `launch` --------------------------------------------------
@pytest.mark.parametrize("address", ["127.0.0.1$(touch {x})", "node0;touch {x}", "`touch {x}`", "a b", "-node",
                                     "10.0.0.1\ntouch {x}", ""])
def test_launch_refuses_a_main_ip_that_is_not_an_address(demo, tmp_path, capsys, address):
    marker = tmp_path / "INJECTED"
    code, _, stderr = cli(capsys, "launch", "--strategy", "ddp", "--nodes", 2, "--nproc-per-node", 1,
                          f"--main-ip={address.format(x=marker)}", "--out", tmp_path / "run")
    assert code == 2 and "--main-ip" in stderr and "Traceback" not in stderr, stderr
    assert not (tmp_path / "run").exists() and not marker.exists()


def test_launch_accepts_addresses_and_host_names(demo, tmp_path, capsys):
    for n, address in enumerate(["10.1.2.3", "fe80::1", "node0", "node-0.cluster.example."]):
        code, _, stderr = cli(capsys, "launch", "--strategy", "ddp", "--nodes", 2, "--nproc-per-node", 1,
                              "--main-ip", address, "--out", tmp_path / f"run{n}")
        assert code == 0, (address, stderr)


def test_launch_refuses_an_out_folder_with_a_newline(demo, tmp_path, capsys):
    out = tmp_path / "run\ntouch INJECTED"
    code, _, stderr = cli(capsys, "launch", "--strategy", "ddp", "--nodes", 1, "--nproc-per-node", 1, "--out", out)
    assert code == 2 and "--out" in stderr and "control character" in stderr and not out.exists()


def test_node_scripts_never_run_what_a_hostile_out_folder_holds(demo, tmp_path, capsys):
    """The whole script run by bash, with a stub for python: the folder reaches the worker intact
    and the $(...), backtick and quotes in it never run."""
    marker = tmp_path / "INJECTED"
    out = tmp_path / f"run $(touch {marker}) `touch {marker}` it's \"q\" ${{HOME}}"
    code, _, stderr = cli(capsys, "launch", "--strategy", "ddp", "--nodes", 2, "--nproc-per-node", 1,
                          "--main-ip", "127.0.0.1", "--out", out)
    assert code == 0, stderr
    stub = tmp_path / "python-stub"
    argv_file = tmp_path / "argv.txt"
    stub.write_text(f'#!/usr/bin/env bash\nprintf "%s\\n" "$@" > {argv_file}\n')
    stub.chmod(0o755)
    for node in (0, 1):
        script = out / "launch" / f"node-{node}.sh"
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0
        done = subprocess.run(["bash", str(script), "--resume"], capture_output=True, text=True, timeout=30,
                              env={**os.environ, "PYTHON": str(stub)})
        assert done.returncode == 0, done.stderr
        assert f"Output: {out}/launch/node-{node}.log" in done.stdout
        argv = argv_file.read_text().splitlines()
        assert argv[argv.index("workbench.training.worker") + 1] == str(out) and argv[-1] == "--resume"
        assert argv[argv.index("--machine_rank") + 1] == str(node)
        # every comment line is still one comment line
        for line in script.read_text().splitlines()[1:7]:
            assert line.startswith("# ") or line.startswith("set "), line
    assert not marker.exists()
    assert sys.executable  # the stub stood in for it
