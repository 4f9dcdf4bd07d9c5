"""The one inventory of this machine's GPUs: which devices a CUDA process here sees, in torch's order,
and where each one is in NVML's view.

NVML numbers every physical GPU and knows nothing of CUDA_VISIBLE_DEVICES; torch (the CUDA runtime)
sees only the devices that variable lists, renumbered from 0. The variable takes indices ("2,0"),
GPU UUIDs or unique prefixes of them ("GPU-5a3c..."), MIG instance UUIDs ("MIG-9f2e...", or the old
"MIG-GPU-<uuid>/<gi>/<ci>"), "" (no GPU) or "-1" (no GPU); like CUDA, the list ends at the first entry
that names no device. Planner, training, inference and the UI all count and size GPUs here, so a
planned map never names a GPU torch does not have. ``visible`` never raises for a missing driver.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Device:
    index: int              # torch's cuda:N
    nvml_index: int         # the physical GPU in NVML's numbering (a MIG instance's parent)
    uuid: str               # GPU-... or MIG-...
    name: str
    total_bytes: int
    mig_index: int | None = None  # the instance's slot on its parent; None for a whole GPU

    @property
    def torch_name(self) -> str:
        return f"cuda:{self.index}"


@dataclass(frozen=True)
class Physical:
    """One device NVML reports: a whole GPU or a MIG instance on one."""

    nvml_index: int
    uuid: str
    name: str
    total_bytes: int
    mig_index: int | None = None
    handle: object = None


_nvml_state: dict = {}


def nvml():
    """The pynvml module after one successful nvmlInit, or None (no package, no driver)."""
    if "module" not in _nvml_state:
        try:
            import pynvml

            pynvml.nvmlInit()
            _nvml_state["module"] = pynvml
        except Exception:  # no driver / no GPU / no package: the CPU path
            _nvml_state["module"] = None
    return _nvml_state["module"]


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def physical_devices() -> list[tuple[Physical, list[Physical]]]:
    """Every GPU NVML reports, each with its MIG instances (empty when MIG is off)."""
    lib = nvml()
    if lib is None:
        return []
    if "physical" in _nvml_state:  # the GPUs and their handles do not change within a process
        return _nvml_state["physical"]
    out = []
    try:
        for index in range(lib.nvmlDeviceGetCount()):
            handle = lib.nvmlDeviceGetHandleByIndex(index)
            name = _text(lib.nvmlDeviceGetName(handle))
            gpu = Physical(index, _text(lib.nvmlDeviceGetUUID(handle)), name,
                           int(lib.nvmlDeviceGetMemoryInfo(handle).total), None, handle)
            out.append((gpu, _mig_instances(lib, gpu)))
    except Exception:  # noqa: BLE001 - a driver that answers badly is a machine without GPUs to us
        log.warning("NVML could not list the GPUs", exc_info=True)
        return []
    _nvml_state["physical"] = out
    return out


def _mig_instances(lib, gpu: Physical) -> list[Physical]:
    try:
        current, _pending = lib.nvmlDeviceGetMigMode(gpu.handle)
    except Exception:  # noqa: BLE001 - no MIG support on this card or driver
        return []
    if not current:
        return []
    found = []
    for slot in range(lib.nvmlDeviceGetMaxMigDeviceCount(gpu.handle)):
        try:
            handle = lib.nvmlDeviceGetMigDeviceHandleByIndex(gpu.handle, slot)
        except Exception:  # noqa: BLE001 - an empty slot
            continue
        found.append(Physical(gpu.nvml_index, _text(lib.nvmlDeviceGetUUID(handle)), f"{gpu.name} MIG",
                              int(lib.nvmlDeviceGetMemoryInfo(handle).total), slot, handle))
    return found


def _match(entry: str, gpus: list[tuple[Physical, list[Physical]]]) -> list[Physical] | None:
    """The devices one CUDA_VISIBLE_DEVICES entry names, or None when it names none (the list ends)."""
    entry = entry.strip()
    if entry.isdigit():
        index = int(entry)
        if index >= len(gpus):
            return None
        gpu, migs = gpus[index]
        return migs or [gpu]
    if entry.startswith("MIG-GPU-"):  # the CUDA 11.0 form: MIG-GPU-<gpu uuid>/<gi>/<ci>
        parent = entry.removeprefix("MIG-").split("/")[0]
        found = [m for g, migs in gpus if g.uuid == parent for m in migs]
        return found[:1] or None
    if entry.startswith(("GPU-", "MIG-")):
        pool = [g for g, _ in gpus] if entry.startswith("GPU-") else [m for _, migs in gpus for m in migs]
        found = [d for d in pool if d.uuid.startswith(entry)]
        if len(found) != 1:  # unknown, or a prefix of several: CUDA takes it as invalid
            return None
        gpu = found[0]
        if entry.startswith("GPU-"):
            migs = next(m for g, m in gpus if g.uuid == gpu.uuid)
            return migs or [gpu]
        return [gpu]
    return None  # "-1", a name, anything else


def resolve(visible: str | None, gpus: list[tuple[Physical, list[Physical]]]) -> list[Device]:
    """The devices a CUDA process sees for CUDA_VISIBLE_DEVICES ``visible`` (None: unset), in torch's order."""
    if visible is None:
        chosen = [d for gpu, migs in gpus for d in (migs or [gpu])]
    else:
        chosen, seen = [], set()
        for entry in visible.split(","):
            found = _match(entry, gpus) if entry.strip() else None
            if found is None or any(d.uuid in seen for d in found):
                break
            seen.update(d.uuid for d in found)
            chosen.extend(found)
    return [Device(i, d.nvml_index, d.uuid, d.name, d.total_bytes, d.mig_index) for i, d in enumerate(chosen)]


def visible() -> list[Device]:
    """The GPUs this process's CUDA sees, in torch's order, from NVML (no CUDA initialised); where NVML
    is missing but torch is already using CUDA, torch's own list."""
    gpus = physical_devices()
    if gpus:
        return resolve(os.environ.get("CUDA_VISIBLE_DEVICES"), gpus)
    return _from_torch()


def _from_torch() -> list[Device]:
    import sys

    torch = sys.modules.get("torch")  # never import torch (or initialise CUDA) just to count
    try:
        if torch is None or not torch.cuda.is_available():
            return []
        return [Device(i, i, str(getattr(p, "uuid", "")), p.name, int(p.total_memory))
                for i, p in ((i, torch.cuda.get_device_properties(i)) for i in range(torch.cuda.device_count()))]
    except Exception:  # noqa: BLE001
        return []


def count() -> int:
    """How many GPUs torch sees here (cuda:0 .. cuda:count-1)."""
    return len(visible())


def handle(device: Device):
    """The NVML handle of ``device`` (its MIG instance's where it is one), or None without NVML."""
    for gpu, migs in physical_devices():
        for d in [gpu, *migs]:
            if d.uuid == device.uuid:
                return d.handle
    return None
