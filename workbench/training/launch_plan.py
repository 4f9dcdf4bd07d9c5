"""Several processes and several nodes: what a launch needs, decided without torch.

The workbench never runs its own collectives: ``accelerate launch`` (torchrun underneath)
starts one process per GPU, each runs ``python -m workbench.training.worker RUN_DIR``, and
Trainer (through accelerate) does DDP or FSDP2. This module holds the decisions around that:

- how many processes a config asks for, and how the planned batch is split over them
  (gradient accumulation divided by the world size, so the effective batch stays the plan);
- the accelerate config file (DDP or FSDP2 with its wrap classes, efficient loading and
  activation checkpointing) and the command each node runs;
- the files a run folder gains under a launch: the stop request the supervisor writes, and
  one record per rank that failed, so the supervisor can name the rank that ended a run.

Nothing here imports torch, so the UI and the CLI can show the plan instantly.
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import UserError
from workbench.run_folder import (ACCELERATE_CONFIG, LAUNCH_DIR, LAUNCH_LOG, RANKS_DIR, STOP_FILE,  # noqa: F401
                                  RunFolder, fsync_write)

DEFAULT_PORT = 29500
CPU_PROCESSES = 2  # processes per node when a machine has no GPU and nproc_per_node is 0
# A collective that waits longer than this ends the run: a rank that hangs (or a node that
# vanished without closing its sockets) cannot keep the others waiting forever. Loading a 72B
# base on rank 0 while the others wait in the first broadcast must fit inside it.
COLLECTIVE_TIMEOUT_S = int(os.environ.get("WORKBENCH_COLLECTIVE_TIMEOUT_S", "1800"))


# ---- the shape of a launch ---------------------------------------------------------
def local_gpu_count() -> int:
    """GPUs visible here, without initialising CUDA in this process (NVML, else torch)."""
    from workbench import devices

    try:
        return devices.count()
    except Exception:  # noqa: BLE001 - no driver, no NVML: a CPU machine
        return 0


def procs_per_node(training, gpus: int | None = None) -> int:
    """``training.nproc_per_node``, or every visible GPU, or two CPU processes on a GPU-less machine."""
    if training.nproc_per_node > 0:
        return training.nproc_per_node
    gpus = local_gpu_count() if gpus is None else gpus
    return gpus if gpus > 0 else CPU_PROCESSES


@dataclass(frozen=True)
class BatchSplit:
    """The planned batch (one process) and what each of ``world`` processes does to keep it."""

    world: int
    planned_per_device: int  # training.per_device_train_batch_size as configured
    planned_accumulation: int  # training.gradient_accumulation_steps as configured
    per_device: int  # rows per micro-step on each process
    accumulation: int  # micro-steps per optimizer step on each process

    @property
    def planned(self) -> int:
        return self.planned_per_device * self.planned_accumulation

    @property
    def effective(self) -> int:
        return self.per_device * self.accumulation * self.world

    @property
    def exact(self) -> bool:
        return self.effective == self.planned

    def sentence(self) -> str:
        """What the split does to the batch, for the Start message and the CLI."""
        if self.world <= 1:
            return f"Effective batch: {self.per_device} x {self.accumulation} = {self.effective} rows per step."
        rows = "row" if self.per_device == 1 else "rows"
        shown = (f"{self.per_device} {rows} x {self.accumulation} accumulation x {self.world} processes = "
                 f"{self.effective} rows per step")
        divided = [name for name, now, was in (("gradient accumulation", self.accumulation, self.planned_accumulation),
                                               ("batch per process", self.per_device, self.planned_per_device))
                   if now != was]
        how = f" ({' and '.join(divided)} divided by the {self.world} processes)" if divided else ""
        if self.exact:
            return f"Effective batch: {shown}, the planned {self.planned_per_device} x {self.planned_accumulation}{how}."
        # The smallest accumulation >= the planned one whose batch splits evenly over the processes.
        step = self.world // math.gcd(self.planned_per_device, self.world)
        fits = -(-self.planned_accumulation // step) * step
        return (f"Effective batch: {shown}, not the planned {self.planned_per_device} x {self.planned_accumulation} "
                f"= {self.planned}: {self.planned} rows per step cannot be split evenly over {self.world} processes. "
                f"To choose the batch yourself, set training.gradient_accumulation_steps to {fits} "
                f"({self.planned_per_device * fits} rows per step) or run fewer processes (training.nproc_per_node).")


def split_batch(training, world: int) -> BatchSplit:
    """Divide gradient accumulation (then, if needed, the per-device batch) by ``world``.

    The optimizer then sees the planned number of rows per step, so learning rate, schedule
    and results carry over from a single-process run. When the plan does not divide
    (accumulation 1, batch 3, 2 processes), the step grows or shrinks to the nearest multiple
    of the world size and the sentence says so.
    """
    batch, accumulation = training.per_device_train_batch_size, training.gradient_accumulation_steps
    if world <= 1:
        return BatchSplit(1, batch, accumulation, batch, accumulation)
    common = math.gcd(accumulation, world)
    per_process_accumulation, rest = accumulation // common, world // common
    if batch % rest == 0:
        return BatchSplit(world, batch, accumulation, batch // rest, per_process_accumulation)
    # no exact split: the closest step size, never more rows per micro-step than planned (memory)
    planned = batch * accumulation
    per_device, per_process_accumulation = min(
        ((d, a) for d in range(1, batch + 1) for a in range(1, accumulation + 1)),
        key=lambda da: (abs(da[0] * da[1] * world - planned), -da[0]))
    return BatchSplit(world, batch, accumulation, per_device, per_process_accumulation)


def world_size(config, gpus: int | None = None) -> int:
    t = config.training
    if t.strategy == "device_map":
        return 1
    return t.nodes * procs_per_node(t, gpus)


def check_strategy(config, nodes_allowed: bool = False) -> None:
    """A launch needs ddp or fsdp; one machine's launcher runs one node (the rest: ``launch``)."""
    t = config.training
    if t.strategy == "device_map":
        raise UserError("training.strategy is device_map, which runs in one process: choose ddp or fsdp "
                        "(--strategy ddp|fsdp) to start several processes.")
    if t.nodes > 1 and not nodes_allowed:
        raise UserError(f"training.nodes is {t.nodes}: a run over several machines starts on every node. Write "
                        "its files with `python -m workbench launch CONFIG --nodes N ...` and run each node's "
                        "script there (with --resume to continue it), or set training.nodes to 1.")
    if t.strategy == "fsdp" and config.model.quantization == "int8":
        # bitsandbytes keeps 8-bit weights in int8 tensors, which FSDP2 cannot shard (accelerate would leave
        # them whole on every GPU): nf4 stores its packed weights in the model's dtype (loading.quantization_config)
        raise UserError("model.quantization is int8, which fsdp cannot shard (bitsandbytes' 8-bit weights are "
                        "integer tensors): use nf4 with fsdp, or strategy ddp or device_map for an int8 base.")
    if config.model.device_map:
        raise UserError("model.device_map is set, but ddp and fsdp place the whole model themselves (device_map is "
                        "off under a distributed launch): clear model.device_map or use strategy device_map.")


# ---- the accelerate config and the command -----------------------------------------
def accelerate_config(config, nodes: int, nproc: int, machine_rank: int = 0, main_ip: str = "127.0.0.1",
                      main_port: int = DEFAULT_PORT) -> dict:
    """The accelerate config file for ``config``'s strategy (what ``accelerate config`` would write).

    No ``use_cpu``: accelerate sends CPU launches through its single-process launcher, so
    a CPU rehearsal uses the same torchrun launcher as GPUs; the worker picks gloo when
    it sees no GPU."""
    t = config.training
    raw = {
        "compute_environment": "LOCAL_MACHINE",
        "distributed_type": "FSDP" if t.strategy == "fsdp" else "MULTI_GPU",
        "num_machines": nodes,
        "num_processes": nodes * nproc,
        "machine_rank": machine_rank,
        "main_process_ip": main_ip,
        "main_process_port": main_port,
        "rdzv_backend": "static",
        "same_network": True,
        "mixed_precision": "no",  # Trainer sets bf16/fp16 from model.dtype
        "use_cpu": False,
        "gpu_ids": "all",
        "main_training_function": "main",
        "downcast_bf16": "no",
        "tpu_use_cluster": False,
        "tpu_use_sudo": False,
    }
    if t.strategy == "fsdp":
        raw["fsdp_config"] = {
            "fsdp_version": 2,
            "fsdp_auto_wrap_policy": "TRANSFORMER_BASED_WRAP",
            "fsdp_transformer_layer_cls_to_wrap": ",".join(fsdp_wrap_classes(config.model.name_or_path)),
            "fsdp_reshard_after_forward": True,
            # only rank 0 reads the weights; the others get their shards by broadcast. Not for a 4-bit
            # base: accelerate skips that broadcast for 4-bit weights, so every rank quantises its own copy
            # (placement.RankPlacement.load_model), and transformers must then load weights on every rank
            "fsdp_cpu_ram_efficient_loading": config.model.quantization == "none",
            "fsdp_sync_module_states": config.model.quantization == "none",
            # the adapter is small: gathered whole, it loads in plain PEFT and resumes on any world size
            "fsdp_state_dict_type": "FULL_STATE_DICT",
            # training.gradient_checkpointing applies transformers' own checkpointing, which wraps each
            # layer's forward inside FSDP2's hooks. FSDP's checkpoint wrapper renames every layer
            # (_checkpoint_wrapped_module) and peft 0.21, which picks the adapter's weights by module
            # name, then saved 4 of the demo's 32 LoRA tensors (docs/scale-out.md).
            "fsdp_activation_checkpointing": False,
            "fsdp_offload_params": False,
        }
    return raw


def fsdp_wrap_classes(name_or_path: str) -> tuple[str, ...]:
    """The classes FSDP2 shards one by one, from the model's family (its config on this machine):
    every decoder layer and every vision block is a unit, so at most a layer or two is gathered
    at once (plus embeddings and lm_head). A model whose config is not here yet (a hub id
    downloaded on the nodes) is taken as Qwen2-VL only if its name says so; otherwise it is refused."""
    from workbench.models.config import family_of_model
    from workbench.models.families import FAMILIES

    family = family_of_model(name_or_path)
    if family is None:
        by_name = [f for f in FAMILIES.values() if f.name.lower().replace(" ", "") in name_or_path.lower()]
        family = by_name[0] if len(by_name) == 1 else None
    if family is None:
        raise UserError(f"model.name_or_path {name_or_path}: its config.json is not on this machine, so the FSDP "
                        "wrap classes are unknown. Download the model here first (python -m workbench infer or the "
                        "Model box fetches it) or use a preset name.")
    return family.no_split_modules


def write_yaml(path: Path, raw: dict) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    fsync_write(path, yaml.safe_dump(raw, sort_keys=False))
    return path


def worker_command(config_file: str | Path, run_dir: str | Path, resume: bool = False,
                   python: str | None = None, machine_rank: int | None = None) -> list[str]:
    """``accelerate launch`` of the worker for one node (as argv)."""
    python = python or sys.executable
    argv = [python, "-m", "accelerate.commands.launch", "--config_file", str(config_file)]
    if machine_rank is not None:
        argv += ["--machine_rank", str(machine_rank)]
    argv += ["-m", "workbench.training.worker", str(run_dir)]
    return argv + (["--resume"] if resume else [])


def shell_line(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- rank identity (under torchrun) -------------------------------------------------
@dataclass(frozen=True)
class Rank:
    rank: int
    local_rank: int
    world: int
    node: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def current_rank() -> Rank:
    env = os.environ
    world = int(env.get("WORLD_SIZE", "1"))
    local_world = max(int(env.get("LOCAL_WORLD_SIZE", str(world))), 1)
    rank = int(env.get("RANK", "0"))
    return Rank(rank, int(env.get("LOCAL_RANK", "0")), world, int(env.get("GROUP_RANK", str(rank // local_world))))


# ---- files in the run folder --------------------------------------------------------
def stop_file(folder: RunFolder) -> Path:
    return folder.path / STOP_FILE


def request_stop(folder: RunFolder) -> None:
    fsync_write(stop_file(folder), json.dumps({"time": time.time()}))


def clear_stop(folder: RunFolder) -> None:
    stop_file(folder).unlink(missing_ok=True)


def rank_record_file(folder: RunFolder, rank: int) -> Path:
    return folder.path / RANKS_DIR / f"rank-{rank}.json"


def write_rank_failure(folder: RunFolder, rank: int, message: str, secondary: bool) -> None:
    """How this rank ended; ``secondary``: it failed because another rank went away first."""
    path = rank_record_file(folder, rank)
    path.parent.mkdir(exist_ok=True)
    fsync_write(path, json.dumps({"rank": rank, "host": socket.gethostname(), "pid": os.getpid(),
                                  "message": message, "secondary": secondary, "time": time.time()}))


def rank_failures(folder: RunFolder) -> list[dict]:
    found = []
    for path in sorted((folder.path / RANKS_DIR).glob("rank-*.json")):
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and isinstance(record.get("rank"), int):
            found.append(record)
    return sorted(found, key=lambda r: r.get("time", 0))


def clear_rank_failures(folder: RunFolder) -> None:
    for path in (folder.path / RANKS_DIR).glob("rank-*.json"):
        path.unlink(missing_ok=True)


# Errors a rank raises because a peer vanished or stalled, not because of its own work.
_PEER_GONE = re.compile(r"connection (closed|reset)|broken pipe|timed out|timeout|nccl|gloo|"
                        r"process group|socket|peer|store|DistBackendError|terminated by the launcher", re.I)


def is_peer_failure(exc: BaseException) -> bool:
    return type(exc).__name__ in ("DistBackendError", "DistNetworkError", "DistStoreError", "RankTerminated") \
        or bool(_PEER_GONE.search(f"{type(exc).__name__}: {exc}"))


# ---- torchrun's failure summary ------------------------------------------------------
@dataclass(frozen=True)
class ProcessEnd:
    rank: int
    exitcode: int
    signal: str  # "SIGKILL" ... or ""


_FAILURE = re.compile(r"rank\s*:\s*(\d+)[^\n]*\n\s*exitcode\s*:\s*(-?\d+)[^\n]*")


def failed_processes(launcher_output: str) -> list[ProcessEnd]:
    """The processes torchrun reports as failed (its ChildFailedError table), root cause first."""
    root_at = launcher_output.rfind("Root Cause")
    ends = []
    for match in _FAILURE.finditer(launcher_output):
        exitcode = int(match.group(2))
        named = re.search(r"\((SIG[A-Z]+)\)", match.group(0))
        sig = named.group(1) if named else (_signal_name(-exitcode) if exitcode < 0 else "")
        ends.append((root_at >= 0 and match.start() > root_at, ProcessEnd(int(match.group(1)), exitcode, sig)))
    ends.sort(key=lambda pair: not pair[0])  # stable: the root cause first, the rest in the table's order
    return [end for _, end in ends]


def _signal_name(number: int) -> str:
    import signal

    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def resume_hint(folder: RunFolder) -> str:
    return (f"`python -m workbench train --resume --output-dir {shlex.quote(str(folder.path))}` "
            "(or Resume on the Training tab)")


def checkpoint_sentence(folder: RunFolder) -> str:
    last = folder.newest_complete()
    if last is None:
        return "no complete checkpoint was saved yet, so a new run starts from the beginning"
    return f"the newest complete checkpoint is {last.name}; continue with {resume_hint(folder)}"


def explain_launch_failure(folder: RunFolder, returncode: int, launcher_output: str) -> str:
    """One sentence for a launch that ended badly: the rank that ended it first, and where to resume."""
    records = rank_failures(folder)
    primary = next((r for r in records if not r.get("secondary")), None)
    ends = failed_processes(launcher_output)
    killed = next((e for e in ends if e.signal and e.signal not in ("SIGTERM",)), None)
    where = checkpoint_sentence(folder)
    if primary is not None and primary["rank"] != 0:
        said = primary["message"].rstrip(".")
        tail = "" if "checkpoint" in said else f", {where}"
        return f"Rank {primary['rank']} failed: {said}. Every rank stopped{tail}."
    if killed is not None:
        return (f"Rank {killed.rank} was killed ({killed.signal}); every rank stopped, {where}.")
    if primary is not None:
        return f"{primary['message'].rstrip('.')}; every rank stopped."
    if ends:
        first = ends[0]
        how = f"signal {first.signal}" if first.signal else f"exit code {first.exitcode}"
        return f"Rank {first.rank} ended with {how}; every rank stopped, {where}."
    return (f"accelerate launch ended with exit code {returncode} (its output is in "
            f"{folder.path / LAUNCH_DIR / LAUNCH_LOG}); {where}.")
