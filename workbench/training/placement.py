"""Where a job's model runs and who writes the run folder: one process, or one rank of a launch.

``TrainingJob`` asks its placement at the few points where a rank of a DDP/FSDP2 launch
differs from the one-process run (device_map over the GPUs, today's default):

- the live lock: rank 0 takes it over from the supervisor that launched it; other ranks hold none;
- writes: only rank 0 writes status, events, metrics, COMPLETE markers, the adapter;
- loading: device_map is off; each rank loads on its own device (FSDP: rank 0 reads, the others wait);
- the batch: gradient accumulation divided by the world size (``distributed.split_batch``);
- the stop: every rank stops at the same step (rank 0 reads the stop request; during training one
  non-blocking all-reduce per step, read a step later: ``rank_sync``);
- memory: each rank's sample rides on that all-reduce into rank 0's metrics row at logging steps;
- saving: under FSDP2 the LoRA weights are gathered whole (only the trainable ones) before rank 0
  writes a plain PEFT adapter.
"""

from __future__ import annotations

import logging
import os
import socket

from workbench.live_lock import ensure_held
from workbench.training.bridge import WorkbenchCallback
from workbench.training.launch_plan import (COLLECTIVE_TIMEOUT_S, Rank, clear_stop, split_batch,
                                            stop_file)

log = logging.getLogger("workbench.training")


class SingleProcess:
    """One process; the model on the planned device_map (or the CPU)."""

    is_main = True
    world = 1

    def take_lock(self, folder, owner):
        lock = folder.acquire(owner)
        clear_stop(folder)  # a request left by a run that ended before reading it
        return lock

    def check(self, config) -> None:
        from workbench.training.checks import check_device_map

        check_device_map(config)

    def load_model(self, path: str, config):
        """The base on the configured device_map, else the planner's map (``loading.pick_device_map``)."""
        from workbench.training.loading import load_model

        return load_model(path, config)

    def trainer_config(self, config):
        return config

    def trainer_overrides(self) -> dict:
        return {}

    def before_trainer(self, model) -> None:
        pass

    def trainer_class(self, base):
        return base

    def callbacks(self, job) -> list:
        return [WorkbenchCallback(job)]

    def should_stop(self, job) -> bool:
        # a stop request file lets another process (the app watching a CLI run) stop this one
        if not job.stop_requested and stop_file(job.folder).exists():
            clear_stop(job.folder)
            job._stop.set()
            job.say("Stop requested from another process: saving the adapter at the end of this step.")
        return job.stop_requested

    def same_on_every_rank(self, value: int) -> bool:
        return True

    def save_adapter(self, model, trainer, folder) -> None:
        from workbench.training.output import save_adapter_atomically

        save_adapter_atomically(model, folder)


class RankPlacement(SingleProcess):
    """One rank of an ``accelerate launch`` (DDP or FSDP2), process group already initialised."""

    def __init__(self, rank: Rank, strategy: str, supervisor_pid: int | None = None):
        self.rank, self.strategy, self.supervisor_pid = rank, strategy, supervisor_pid
        self.is_main = rank.is_main
        self.world = rank.world
        self.quantized = False  # a 4-bit base (load_model)
        self.packed: tuple[str, str] | None = None  # fsdp_4bit.fingerprint before sharding

    @property
    def fsdp(self) -> bool:
        return self.strategy == "fsdp"

    def device(self):
        import torch

        return torch.device("cuda", self.rank.local_rank) if torch.cuda.is_available() else torch.device("cpu")

    def take_lock(self, folder, owner):
        if not self.is_main:
            return None
        from workbench.live_lock import LiveLock

        lock = LiveLock(folder, owner)
        return lock.take_over(self.supervisor_pid) if self.supervisor_pid else lock.acquire()

    def check(self, config) -> None:
        pass  # device_map is off under a launch (the worker refuses a configured map)

    def load_model(self, path: str, config):
        """DDP: the whole base on this rank's device. FSDP2: rank 0 reads the weights to the CPU;
        the other ranks build the model without weights (parameters on the meta device, buffers
        real) and receive their shards from rank 0 when accelerate shards the model: one copy of
        a 72B base in a node's memory, not one per GPU.

        FSDP2 on a 4-bit base: every rank reads and quantises the base on the CPU (bitsandbytes'
        quantisation is deterministic, so the copies agree to the bit) and FSDP2 keeps each rank's
        shard of the packed weights: accelerate 1.16 skips its rank-0 broadcast for a model holding
        bitsandbytes' 4-bit weights (and would not send their quantisation state). On the CPU, not
        the GPU, because a whole 4-bit 72B (39.7 GiB) does not fit one 40 GB GPU (docs/qlora-fsdp.md)."""
        from workbench.training.loading import load_model

        self.quantized = config.model.quantization != "none"
        if not self.fsdp:
            return load_model(path, config, device_map={"": str(self.device())})
        if self.is_main or self.quantized:
            return load_model(path, config, device_map={"": "cpu"})
        return empty_model(path, config)


    def trainer_config(self, config):
        split = split_batch(config.training, self.world)
        return config.replace(training={"per_device_train_batch_size": split.per_device,
                                        "gradient_accumulation_steps": split.accumulation})

    def trainer_overrides(self) -> dict:
        # every trainable weight gets a gradient on every rank (vision_sync), so DDP need not
        # search the graph for unused ones each step
        return {"ddp_timeout": COLLECTIVE_TIMEOUT_S, "ddp_find_unused_parameters": False}

    def before_trainer(self, model) -> None:
        from workbench.training.vision_sync import keep_vision_tower_in_step

        keep_vision_tower_in_step(model)
        if self.fsdp and self.quantized:
            from workbench.training.fsdp_4bit import fingerprint

            self.packed = fingerprint(model)  # checked after sharding (RankCallback.on_train_begin)

    def trainer_class(self, base):
        return fsdp_trainer(base) if self.fsdp else base

    def callbacks(self, job) -> list:
        return [RankCallback(job)]

    def should_stop(self, job) -> bool:
        """A blocking agreement, for the moments outside the training steps (before the first one);
        during training ``RankCallback`` agrees without waiting (``rank_sync``)."""
        local = job.stop_requested or (self.is_main and stop_file(job.folder).exists())
        if self.all_reduce_max(int(local)):
            self.agreed_stop(job)
        return job.stop_requested

    def agreed_stop(self, job) -> None:
        if self.is_main:
            clear_stop(job.folder)  # consumed: a later resume must not stop at its first step
        if not job.stop_requested:
            job._stop.set()
            job.say("Every rank agreed to stop at the end of this step.")

    def all_reduce_max(self, value: int) -> int:
        import torch
        import torch.distributed as dist

        flag = torch.tensor([value], dtype=torch.int32, device=self.device())
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item())

    def same_on_every_rank(self, value: int) -> bool:
        """``value`` (below 2**31) is the same on every rank: a collective, every rank calls it."""
        return self.all_reduce_max(value) == -self.all_reduce_max(-value)

    def save_adapter(self, model, trainer, folder) -> None:
        from workbench.training.output import save_adapter_atomically

        state = trainable_state_dict(model) if self.fsdp else None  # a collective: every rank
        if self.is_main:
            save_adapter_atomically(model, folder, state_dict=state)
            if state is not None:
                check_saved_adapter(folder.path, len(state))


def check_saved_adapter(folder, trained: int) -> None:
    """peft picks the adapter's tensors out of a state dict by module name: a wrapper that renames
    modules makes it drop tensors without a word. Every trained tensor must be in the file."""
    from safetensors import safe_open

    from workbench.run_folder import ADAPTER_WEIGHTS

    with safe_open(str(folder / ADAPTER_WEIGHTS), framework="pt") as f:
        saved = len(list(f.keys()))
    if saved < trained:
        raise RuntimeError(f"the saved adapter holds {saved} of the {trained} trained tensors")


class RankCallback(WorkbenchCallback):
    """The bridge on every rank: the stop agreed and every rank's memory in one non-blocking
    collective per step (``rank_sync``), COMPLETE after all ranks have written."""

    def __init__(self, job):
        from workbench.training.rank_sync import StepAgreement

        super().__init__(job)
        placement = job.placement
        self.agreement = StepAgreement(placement.rank.rank, placement.world, str(placement.device()))
        self._log_step = -1

    def on_step_end(self, args, state, control, **kwargs):
        ensure_held(args.output_dir)
        job = self.job
        job._set_progress(state.global_step, state.max_steps)
        asked = job.stop_requested or (job.placement.is_main and stop_file(job.folder).exists())
        # the flags are the same on every rank (Trainer's schedule), so every rank sends memory at the same steps
        with_memory = bool(control.should_log or control.should_evaluate)
        if self.agreement.step(state.global_step, asked, with_memory):
            job.placement.agreed_stop(job)
            control.should_training_stop = True
            control.should_save = True
            control.should_log = True

    def on_train_end(self, args, state, control, **kwargs):
        self.agreement.end()

    def on_log(self, args, state, control, logs=None, **kwargs):
        self._log_step = state.global_step
        return super().on_log(args, state, control, logs=logs, **kwargs)

    def memory(self) -> list[dict]:
        gathered = self.agreement.memory(self._log_step)
        return gathered if gathered is not None else self.gather_memory()

    def gather_memory(self) -> list[dict]:
        """Every rank's sample by ``all_gather_object``: for a row at a step that sent none (every rank
        logs the same rows, so every rank takes this path together)."""
        import torch
        import torch.distributed as dist

        from workbench.hardware import sample_memory

        placement = self.job.placement
        own = str(placement.device())
        mine = [m for m in sample_memory() if not torch.cuda.is_available() or m.get("device") == own]
        mine = [{**m, "rank": placement.rank.rank, "host": socket.gethostname()} for m in mine]
        gathered: list = [None] * placement.world
        dist.all_gather_object(gathered, mine)
        return [m for rows in gathered for m in (rows or [])]

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        super().on_train_begin(args, state, control, model=model, **kwargs)
        self.agreement.begin()
        placement = self.job.placement
        if placement.fsdp and model is not None and placement.packed is not None:
            from workbench.training.fsdp_4bit import check_fingerprint, sharded_4bit_weights

            sharded, total = sharded_4bit_weights(model)
            # accelerate leaves a 4-bit weight it cannot shard whole on every GPU, without an error
            log.log(logging.INFO if sharded == total else logging.WARNING,
                    "FSDP2 shards %d of %d 4-bit weights over %d ranks", sharded, total, placement.world)
            check_fingerprint(model, placement.packed)

    def on_save(self, args, state, control, **kwargs):
        import torch.distributed as dist

        # rank 1 may still be writing its RNG state when rank 0 is done: mark complete after all
        dist.barrier()
        if self.job.placement.is_main:
            super().on_save(args, state, control, **kwargs)


def empty_model(path: str, config):
    """The base model's structure from its config.json, without reading its weights.

    Parameters get uninitialised CPU storage (``torch.empty``): the kernel commits a page only
    when it is written, so a rank holds next to nothing until accelerate moves the model to
    the meta device and fills its shards from rank 0. They cannot stay on the meta device
    themselves: accelerate re-points the optimizer at the sharded parameters by storage
    address, and meta tensors all share address 0 (measured: a wrong loss, then a hang).
    Buffers (rotary frequencies, which FSDP2 does not broadcast) are computed for real."""
    import torch
    from accelerate import init_empty_weights

    from workbench.models import load_model_config
    from workbench.models.families import family_of
    from workbench.training.loading import pick_dtype

    model_config = load_model_config(path)
    model_class = family_of(model_config).transformers_class("model_class")
    # accelerate's patch of nn.Module is process-wide, which is fine in a worker process
    with init_empty_weights(include_buffers=False):
        model = model_class._from_config(model_config, dtype=pick_dtype(config.model.dtype))
    made: dict[int, torch.nn.Parameter] = {}  # tied weights stay one parameter
    for module in model.modules():
        for name, param in list(module._parameters.items()):
            if param is not None:
                if id(param) not in made:
                    made[id(param)] = torch.nn.Parameter(torch.empty_like(param, device="cpu"),
                                                         requires_grad=param.requires_grad)
                module._parameters[name] = made[id(param)]
    return model


def trainable_state_dict(model) -> dict:
    """The trainable (LoRA) weights of an FSDP2 model, gathered whole on the CPU of rank 0.

    accelerate's ``get_state_dict`` gathers the whole model, frozen base included (136 GiB
    for 72B) to save a few MiB of adapter; this gathers only what PEFT saves."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
    return get_model_state_dict(model, options=options)


def fsdp_trainer(base):
    """Trainer whose checkpoints gather only the trainable weights (see ``trainable_state_dict``),
    and which runs FSDP2 on CPU processes too (see ``enable_fsdp_on_cpu``)."""

    class FsdpTrainer(base):
        def create_accelerator_and_postprocess(self):
            super().create_accelerator_and_postprocess()
            enable_fsdp_on_cpu(self)

        def save_model(self, output_dir=None, _internal_call=False):
            if not self.is_fsdp_enabled:
                return super().save_model(output_dir, _internal_call)
            state = trainable_state_dict(self.model)
            if self.args.should_save:
                self._save(output_dir or self.args.output_dir, state_dict=state)

    return FsdpTrainer


def enable_fsdp_on_cpu(trainer) -> None:
    """Let accelerate's FSDP2 path run on CPU processes (gloo), for rehearsals without GPUs.

    accelerate 1.15 keeps its FSDP plugin only for GPU-like devices: on CPU processes its
    state stays MULTI_CPU and the plugin is dropped, so Trainer would silently run DDP.
    torch's ``fully_shard`` works on the CPU with gloo, so once Trainer has made its
    Accelerator, the state is switched to FSDP with the plugin accelerate builds from the
    launch's environment (the same one it builds on GPUs). GPUs never take this path."""
    from accelerate.state import PartialState
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin

    state = trainer.accelerator.state
    if state.distributed_type != DistributedType.MULTI_CPU or os.environ.get("ACCELERATE_USE_FSDP") != "true":
        return
    state.distributed_type = DistributedType.FSDP
    state.fsdp_plugin = FullyShardedDataParallelPlugin()
    # every AcceleratorState() refreshes its type from PartialState's: accelerate itself writes
    # the FSDP type there at the end of its own initialisation (state.py), and so does this
    PartialState._shared_state["distributed_type"] = DistributedType.FSDP
    trainer.is_fsdp_enabled = True
