"""``python -m workbench launch``: the files that start one run on several machines.

Writes into the run folder (--out, on a disk every node sees at the same path):

    run.yaml                   the RunConfig, strategy and node counts included
    launch/accelerate.yaml     the accelerate config (DDP, or FSDP2 with its wrap classes)
    launch/node-<i>.sh         what node i runs: accelerate launch of the workbench worker

then prints the command for each node. Without GPUs the same scripts start CPU processes
that talk over gloo, so a multi-node launch can be rehearsed on one laptop (two "nodes" on
127.0.0.1). Each script takes --resume to continue from the newest complete checkpoint.
"""

from __future__ import annotations

import ipaddress
import re
import shlex
import stat
import sys
from pathlib import Path

from workbench.errors import UserError
from workbench.run_folder import CONFIG_NAME

PACKAGE_ROOT = Path(__file__).resolve().parents[2]
# RFC 1123 host names: what every node's resolver accepts, and nothing a shell reads as code.
HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


def register(sub) -> None:
    p = sub.add_parser("launch", help="Write the accelerate config, run.yaml and one script per node for a multi-node run.",
                       description="Write the files that start one DDP/FSDP2 run on several machines (run.yaml, "
                                   "launch/accelerate.yaml, launch/node-<i>.sh) and print what each node runs. "
                                   "The same scripts run CPU processes (gloo) on machines without GPUs.")
    p.add_argument("config", nargs="?", help="RunConfig YAML (saved by the LoRA tab or a run's run.yaml); default: the demo.")
    p.add_argument("--main-ip", help="Address of node 0, which every node can reach (127.0.0.1 to rehearse on one machine).")
    p.add_argument("--main-port", type=int, default=29500, help="Port on node 0 for the rendezvous (default 29500).")
    p.add_argument("--out", required=True, help="The run folder to create: the same path on every node (a shared disk).")
    from workbench.cli.config_flags import add_config_flags

    add_config_flags(p, skip=("output_dir",))  # --out names the run folder
    p.set_defaults(func=run)


def run(args) -> int:
    from workbench.training.launch_plan import split_batch

    plan = write_launch(args)
    config, scripts = plan["config"], plan["scripts"]
    t = config.training
    print(f"Wrote {len(scripts)} node script(s), launch/accelerate.yaml and run.yaml into {plan['folder']}.")
    print(f"{t.strategy.upper()} over {t.nodes} node(s) x {t.nproc_per_node} processes; rendezvous at "
          f"{plan['main_ip']}:{plan['main_port']}. {split_batch(t, t.nodes * t.nproc_per_node).sentence()}")
    print("Start every node at about the same time (add --resume to continue a stopped run):")
    for node, script in enumerate(scripts):
        where = f"node {node}" + (f" ({plan['main_ip']})" if node == 0 else "")
        print(f"  on {where}: bash {script}")
    print(f"Watch it with the app (Training tab, watch a run folder: {plan['folder']}) or in its metrics.jsonl.")
    return 0


def config_for(args):
    from workbench.cli.config_flags import config_overrides
    from workbench.cli.train import base_config, check_max_steps

    check_max_steps(args)
    config = base_config(args.config, args.name_or_path, args.train_path)
    overrides = config_overrides(args)
    if args.train_path:  # the same path on every node, whatever folder each starts in (demo-video: its rows)
        from workbench.demo_video import demo_dataset_file

        overrides["data"]["train_path"] = str(Path(demo_dataset_file(args.train_path)).expanduser().resolve())
    config = config.replace(**overrides)
    t = config.training
    if t.strategy not in ("ddp", "fsdp"):
        raise UserError(f"training.strategy is {t.strategy}: a launch runs ddp or fsdp; pass --strategy ddp or "
                        "--strategy fsdp.")
    if t.nodes < 1:
        raise UserError(f"--nodes must be 1 or more, got {t.nodes}.")
    if t.nproc_per_node < 1:
        raise UserError("--nproc-per-node is needed: the number of GPUs (processes) on each node, e.g. 4 "
                        "(this machine cannot see the other nodes' GPUs).")
    return config


def write_launch(args) -> dict:
    from workbench.training.checks import check_run_config
    from workbench.training.launch_plan import (ACCELERATE_CONFIG, LAUNCH_DIR, accelerate_config,
                                                check_strategy, write_yaml)

    config = config_for(args)
    t = config.training
    if t.nodes > 1 and not args.main_ip:
        raise UserError(f"--main-ip is needed for {t.nodes} nodes: the address of node 0 that every node can "
                        "reach (127.0.0.1 to rehearse on this machine).")
    if not 0 < args.main_port < 65536:
        raise UserError(f"--main-port must be a port number between 1 and 65535, got {args.main_port}.")
    main_ip = check_address(args.main_ip or "127.0.0.1")
    folder = check_script_path(Path(args.out).expanduser().resolve(), "--out")
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise UserError(f"--out {folder} already exists and is not an empty folder: choose a new run folder "
                        "(nothing was overwritten); to continue a run, start its node scripts with --resume.")
    config = config.replace(training={"output_dir": str(folder)})
    check_strategy(config, nodes_allowed=True)
    check_run_config(config, check_output_dir=False, check_files=False)  # the data lives on the nodes
    folder.mkdir(parents=True, exist_ok=True)
    config.save(folder / CONFIG_NAME)
    config_file = write_yaml(folder / LAUNCH_DIR / ACCELERATE_CONFIG,
                             accelerate_config(config, t.nodes, t.nproc_per_node, 0, main_ip, args.main_port))
    scripts = [write_node_script(folder, config_file, node, t.nodes, main_ip, args.main_port, t.strategy,
                                 t.nproc_per_node) for node in range(t.nodes)]
    return {"config": config, "folder": folder, "scripts": scripts, "main_ip": main_ip, "main_port": args.main_port}


def check_address(value: str) -> str:
    """--main-ip as an IP address or a host name; anything else is refused before it reaches a script."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    name = value[:-1] if value.endswith(".") else value
    if 0 < len(name) <= 253 and all(HOST_LABEL.fullmatch(label) for label in name.split(".")):
        return value
    raise UserError(f"--main-ip {value!r} is neither an IP address nor a host name: give the address of node 0 "
                    "that every node can reach, e.g. 10.0.0.5 or node0.cluster.")


def check_script_path(path: Path, flag: str) -> Path:
    """A path the node scripts name: quoted everywhere, but a control character (a newline) would
    still break a comment line and is never part of a folder someone means."""
    if any(ord(c) < 32 or ord(c) == 127 for c in str(path)):
        raise UserError(f"{flag} {str(path)!r} holds a control character (a newline or tab): choose a folder "
                        "name without one.")
    return path


def write_node_script(folder: Path, config_file: Path, node: int, nodes: int, main_ip: str, main_port: int,
                      strategy: str, nproc: int) -> Path:
    from workbench.training.launch_plan import LAUNCH_DIR, LAUNCH_LOG, shell_line, worker_command

    # Every value reaches the script through shlex.quote (comments included), so a path or an
    # address holding $(...), a backtick or a quote is text to bash, never a command.
    argv = worker_command(config_file, folder, machine_rank=node, python="$PYTHON")
    command = shell_line(argv).replace("'$PYTHON'", '"$PYTHON"')
    log = folder / LAUNCH_DIR / (LAUNCH_LOG if nodes == 1 else f"node-{node}.log")
    q = shlex.quote
    address = q(f"{main_ip}:{main_port}")
    hello = (f"node {node} of {nodes}: waiting for every node to join at {main_ip}:{main_port}, then training "
             f"(a silent wait means another node's script has not started yet; Ctrl-C gives up). Output: {log}")
    text = f"""#!/usr/bin/env bash
# Node {node} of {nodes}: {strategy.upper()} over {nodes} node(s) x {nproc} process(es) ({nodes * nproc} in all),
# rendezvous at {address} (node 0). Written by `python -m workbench launch`.
# Start it on node {node}, every node at about the same time. The run folder {q(str(folder))} must be the same
# path on every node (a shared disk): rank 0 writes the run there. Arguments are passed on to the worker
# (--resume continues from the newest complete checkpoint). Output goes to {q(log.name)} in launch/.
set -euo pipefail
DEFAULT_PYTHON={q(sys.executable)}
WORKBENCH_ROOT={q(str(PACKAGE_ROOT))}
PYTHON="${{PYTHON:-$DEFAULT_PYTHON}}"
export PYTHONPATH="$WORKBENCH_ROOT${{PYTHONPATH:+:$PYTHONPATH}}"
printf '%s\\n' {q(hello)} | tee -a {q(str(log))}
{command} "$@" 2>&1 | tee -a {q(str(log))}
"""
    path = folder / LAUNCH_DIR / f"node-{node}.sh"
    path.write_text(text, encoding="utf-8")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path
