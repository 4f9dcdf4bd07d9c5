"""GPU inventory and memory sampling: nvidia-ml-py where a driver is present, else CPU.

``detect_gpus`` and ``sample_memory`` never raise because a driver or a GPU is missing.
NVML is initialised once per process; ``sample_memory`` runs every logging step of a
training job, so it does only NVML queries and torch counters.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from workbench.errors import UserError

GIB = 1024**3
GB = 1000**3
# A single GPU above 4 TiB is not a real card in 2025: such a spec is a typo.
MAX_GPU_BYTES = 4 * 1024**4
MAX_GPUS = 64

_UNITS = {"gib": GIB, "gb": GB, "g": GIB, "mib": 1024**2, "mb": 1000**2, "tib": 1024**4, "tb": 1000**4}


@dataclass(frozen=True)
class Gpu:
    index: int
    name: str
    total_bytes: int

    @property
    def total_gib(self) -> float:
        return self.total_bytes / GIB


_nvml_state: dict = {}


def _nvml():
    """The pynvml module after one successful nvmlInit, or None (no package, no driver)."""
    if "module" not in _nvml_state:
        try:
            import pynvml

            pynvml.nvmlInit()
            _nvml_state["module"] = pynvml
        except Exception:  # no driver / no GPU / no package: the CPU path
            _nvml_state["module"] = None
    return _nvml_state["module"]


def detect_gpus() -> list[Gpu]:
    """The visible NVIDIA GPUs (index, name, total memory); empty without a driver."""
    nvml = _nvml()
    if nvml is None:
        return []
    gpus = []
    try:
        for index in range(nvml.nvmlDeviceGetCount()):
            handle = nvml.nvmlDeviceGetHandleByIndex(index)
            name = nvml.nvmlDeviceGetName(handle)
            name = name.decode() if isinstance(name, bytes) else str(name)
            gpus.append(Gpu(index, name, int(nvml.nvmlDeviceGetMemoryInfo(handle).total)))
    except Exception:
        return []
    return _visible(gpus)


def _visible(gpus: list[Gpu]) -> list[Gpu]:
    """Respect CUDA_VISIBLE_DEVICES (integer form) and renumber as torch would."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return gpus
    try:
        order = [int(x) for x in visible.split(",") if x.strip()]
    except ValueError:  # UUID form: keep NVML's order
        return gpus
    by_index = {g.index: g for g in gpus}
    return [Gpu(i, by_index[n].name, by_index[n].total_bytes) for i, n in enumerate(order) if n in by_index]


def parse_size(text: str) -> int:
    """``40GiB`` -> 42949672960, ``80GB`` -> 80e9, ``24G`` -> 24 GiB. Raises UserError."""
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", str(text))
    if not match:
        raise UserError(f"GPU size '{text}' is not a size: write it like 40GiB, 80GB or 24G.")
    number, unit = float(match.group(1)), (match.group(2) or "gib").lower()
    if unit not in _UNITS:
        raise UserError(f"GPU size '{text}' has an unknown unit '{match.group(2)}': use GiB, GB, MiB or MB.")
    size = int(number * _UNITS[unit])
    if size <= 0:
        raise UserError(f"GPU size '{text}' must be positive.")
    if size < 256 * 1024**2:
        if match.group(2) and unit not in ("g", "gib", "gb", "tib", "tb"):
            raise UserError(f"GPU size '{text}' is below 256 MiB: did you mean {match.group(1)}GiB?")
        raise UserError(f"GPU size '{text}' is below 256 MiB, smaller than any GPU: write it like 24GiB or 80GB.")
    if size > MAX_GPU_BYTES:
        raise UserError(f"GPU size '{text}' is larger than any GPU (over 4 TiB): check the unit.")
    return size


def parse_gpu_spec(spec: str) -> list[Gpu]:
    """``4x40GiB``, ``2x80GB`` or ``40GiB,40GiB,24GiB`` -> GPUs 0..n-1. Raises UserError."""
    text = str(spec or "").strip()
    if not text:
        raise UserError("The GPU spec is empty: write it like 4x40GiB, 2x80GB or 40GiB,40GiB,24GiB.")
    gpus: list[Gpu] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(-?\d+)\s*[xX*]\s*(.+)", part)
        count, size_text = (int(match.group(1)), match.group(2)) if match else (1, part)
        if count <= 0:
            raise UserError(f"GPU count in '{part}' must be at least 1.")
        if len(gpus) + count > MAX_GPUS:
            raise UserError(f"The GPU spec '{text}' lists more than {MAX_GPUS} GPUs: one process drives at most {MAX_GPUS}.")
        size = parse_size(size_text)
        label = _size_label(size)
        start = len(gpus)
        gpus.extend(Gpu(start + i, f"GPU {label}", size) for i in range(count))
    return gpus


def _size_label(size: int) -> str:
    if size % GIB == 0:
        return f"{size // GIB}GiB"
    if size % GB == 0:
        return f"{size // GB}GB"
    return f"{size / GIB:.1f}GiB"


def gpu_spec(gpus: list[Gpu]) -> str:
    """The spec string for a GPU list (``4x40GiB``, or comma-separated when mixed)."""
    labels = [_size_label(g.total_bytes) for g in gpus]
    if labels and len(set(labels)) == 1:
        return f"{len(labels)}x{labels[0]}"
    return ",".join(labels)


def sample_memory() -> list[dict]:
    """Memory in use now, one dict per GPU (or one for the CPU process).

    Keys: device ('cuda:0' ... or 'cpu'), used_bytes (NVML: what nvidia-smi shows, all
    processes), peak_allocated_bytes / peak_reserved_bytes (this process's torch peaks,
    None where unknown).
    """
    rows = []
    nvml = _nvml()
    torch = _torch_if_cuda()
    if nvml is not None:
        try:
            count = nvml.nvmlDeviceGetCount()
        except Exception:
            count = 0
        handles = _nvml_state.setdefault("handles", {})
        torch_count = torch.cuda.device_count() if torch is not None else 0
        for local, index in enumerate(_visible_physical(count)):
            try:
                handle = handles.get(index) or handles.setdefault(index, nvml.nvmlDeviceGetHandleByIndex(index))
                used = int(nvml.nvmlDeviceGetMemoryInfo(handle).used)
            except Exception:
                continue
            peak_alloc = peak_res = None
            if torch is not None and local < torch_count:
                peak_alloc = int(torch.cuda.max_memory_allocated(local))
                peak_res = int(torch.cuda.max_memory_reserved(local))
            rows.append({"device": f"cuda:{local}", "used_bytes": used,
                         "peak_allocated_bytes": peak_alloc, "peak_reserved_bytes": peak_res})
    if rows:
        return rows
    return [{"device": "cpu", "used_bytes": _resident_bytes(),
             "peak_allocated_bytes": None, "peak_reserved_bytes": None}]


def _visible_physical(count: int) -> list[int]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return list(range(count))
    try:
        return [int(x) for x in visible.split(",") if x.strip() and 0 <= int(x) < count]
    except ValueError:
        return list(range(count))


def _torch_if_cuda():
    """torch, if it is already imported and sees CUDA; never imports torch just to sample."""
    import sys

    torch = sys.modules.get("torch")
    try:
        return torch if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized() else None
    except Exception:
        return None


def _resident_bytes() -> int:
    """This process's resident set size (psutil, else /proc/self/statm, else 0)."""
    try:
        import psutil

        return int(psutil.Process().memory_info().rss)
    except Exception:
        pass
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except Exception:
        return 0
