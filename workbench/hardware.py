"""GPU sizes and cards, the planner's GPU specs, and memory sampling (the devices themselves:
``workbench.devices``), nvidia-ml-py where a driver is present, else CPU.

``detect_gpus`` and ``sample_memory`` never raise because a driver or a GPU is missing.
NVML is initialised once per process; ``sample_memory`` runs every logging step of a
training job, so it does only NVML queries and torch counters.
"""

from __future__ import annotations

import dataclasses
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

    @property
    def is_cpu(self) -> bool:
        """This machine's CPU and memory, planned for where there is no GPU (``cpu_device``)."""
        return self.name == CPU_NAME


CPU_NAME = "CPU"


def cpu_device() -> Gpu:
    """This machine's memory as the one device a GPU-less plan trains on (the spec 'cpu')."""
    try:
        import psutil

        total = int(psutil.virtual_memory().total)
    except Exception:  # noqa: BLE001
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    return Gpu(0, CPU_NAME, total)


@dataclass(frozen=True)
class Card:
    """A GPU model as the planner sees it.

    total_gib: what the driver lets a process allocate (``torch.cuda.get_device_properties().
    total_memory``, printed as "total capacity" in torch's out-of-memory message), not the
    marketing size: an A100 40GB reports 39.59 GiB. bf16_tflops: dense bf16 tensor peak from
    the datasheet. link / link_gbps: the default intra-node link and the all-reduce bus
    bandwidth NCCL typically reaches over it (round figures; measure yours with nccl-tests
    and pass --intra-node-gbps).
    """

    name: str
    model: str            # the model token in the name: a100, h100, 4090, ...
    memory_gb: int        # the marketing size that tells variants apart (40 in A100-40GB)
    total_gib: float
    bf16_tflops: float
    link: str
    source: str           # where total_gib was read

    @property
    def total_bytes(self) -> int:
        return int(self.total_gib * GIB)

    @property
    def link_gbps(self) -> float:
        return LINK_GBPS[self.link]


# All-reduce bus bandwidth (GB/s) NCCL reaches between the GPUs of one node, by link: round
# figures of nccl-tests results. A800/H800 NVLink runs at 400 GB/s instead of 600/900;
# consumer cards have no peer-to-peer and go through host memory.
LINK_GBPS = {"nvlink-a100": 230.0, "nvlink-400": 155.0, "nvlink-h100": 360.0, "pcie4": 20.0,
             "pcie4-no-p2p": 12.0, "pcie5-no-p2p": 24.0}

_OOM = "torch out-of-memory message in "
CARDS = (
    Card("A100-40GB", "a100", 40, 39.59, 312, "nvlink-a100", _OOM + "github.com/raoyongming/DenseCLIP/issues/52"),
    Card("A100-80GB", "a100", 80, 79.25, 312, "nvlink-a100", _OOM + "github.com/levihsu/OOTDiffusion/issues/235"),
    Card("A800-40GB", "a800", 40, 39.59, 312, "pcie4", "same HBM2 as the A100 40GB (DenseCLIP#52); A800 40GB is a PCIe card"),
    Card("A800-80GB", "a800", 80, 79.33, 312, "nvlink-400", _OOM + "github.com/hahnyuan/PB-LLM/issues/3"),
    Card("H100-80GB", "h100", 80, 79.11, 989, "nvlink-h100", _OOM + "github.com/vllm-project/vllm/issues/27508"),
    Card("H800-80GB", "h800", 80, 79.11, 989, "nvlink-400", "assumed equal to the H100 80GB (same HBM3)"),
    Card("H20-96GB", "h20", 96, 95.00, 148, "nvlink-h100", _OOM + "github.com/modelscope/DiffSynth-Studio/issues/1238"),
    Card("RTX4090-24GB", "4090", 24, 23.64, 165, "pcie4-no-p2p", _OOM + "github.com/ali-vilab/VGen/issues/104"),
    Card("RTX3090-24GB", "3090", 24, 23.69, 71, "pcie4-no-p2p", _OOM + "github.com/JiaweiLian/AP-PA/issues/3"),
    Card("RTX5090-32GB", "5090", 32, 31.37, 209, "pcie5-no-p2p", _OOM + "github.com/Wan-Video/Wan2.1/issues/465"),
    Card("L40-48GB", "l40", 48, 44.40, 181, "pcie4", _OOM + "github.com/QwenLM/Qwen3-VL/issues/2097"),
    Card("A6000-48GB", "a6000", 48, 44.55, 155, "pcie4", _OOM + "github.com/modelscope/ms-swift/issues/2753"),
    Card("A10-24GB", "a10", 24, 21.99, 125, "pcie4", _OOM + "github.com/zai-org/CogVLM/issues/236"),
)
_VENDOR_WORDS = {"nvidia", "geforce", "rtx", "tesla", "sxm", "sxm4", "sxm5", "hbm3", "hbm2e", "pcie"}


def find_card(text: str) -> Card | None:
    """The card a name means (``A800-40GB``, ``8xH100``'s ``H100``, ``4090``, NVML's ``NVIDIA
    A100-SXM4-40GB``), or None when it names no card in ``CARDS``. Raises UserError when the
    name fits several variants (``A100``: 40 or 80 GB)."""
    tokens = [re.sub(r"^rtx(?=\d)", "", t) for t in re.findall(r"[a-z0-9]+", str(text or "").lower())]
    memory = next((int(m.group(1)) for t in tokens if (m := re.fullmatch(r"(\d+)gi?b?", t))), None)
    models = [t for t in tokens if t not in _VENDOR_WORDS and not re.fullmatch(r"\d+gi?b?", t)]
    if len(models) != 1:
        return None
    matches = [c for c in CARDS if c.model == models[0] and (memory is None or c.memory_gb == memory)]
    if len(matches) > 1:
        raise UserError(f"GPU '{text.strip()}' comes in several sizes: write "
                        f"{' or '.join(c.name for c in matches)}.")
    if matches and "pcie" in tokens and matches[0].link.startswith("nvlink"):
        # The PCIe board of an SXM card: same memory, no NVLink between the GPUs.
        return dataclasses.replace(matches[0], name=matches[0].name + "-PCIe", link="pcie4")
    return matches[0] if matches else None


def usable(gpus: list[Gpu]) -> list[Gpu]:
    """Detected GPUs with the capacity the driver lets a process allocate where the card is known
    (NVML reports 40 GiB for an A100 40GB; a process gets 39.59 GiB)."""
    out = []
    for gpu in gpus:
        try:
            card = find_card(gpu.name)
        except UserError:
            card = None
        out.append(Gpu(gpu.index, card.name, min(card.total_bytes, gpu.total_bytes)) if card else gpu)
    return out


def detect_gpus() -> list[Gpu]:
    """The GPUs this process's CUDA sees (torch's cuda:N order, CUDA_VISIBLE_DEVICES applied in any of
    its forms: ``workbench.devices``); empty without a driver."""
    from workbench import devices

    return [Gpu(d.index, d.name, d.total_bytes) for d in devices.visible()]


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
    """``4x40GiB``, ``2x80GB``, ``40GiB,40GiB,24GiB`` or cards (``4xA800-40GB``, ``8xH100``,
    ``2x4090``: the memory the driver reports for them, see ``CARDS``) -> GPUs 0..n-1; ``cpu``: this
    machine's memory, for a plan on a machine without GPUs. Raises UserError."""
    text = str(spec or "").strip()
    if not text:
        raise UserError("The GPU spec is empty: write it like 4x40GiB, 2x80GB, 40GiB,40GiB,24GiB or 4xA800-40GB.")
    if text.lower() == "cpu":
        return [cpu_device()]
    gpus: list[Gpu] = []
    for part in text.split(","):
        part = part.strip()
        match = re.fullmatch(r"(-?\d+)\s*[xX*]\s*(.+)", part)
        count, size_text = (int(match.group(1)), match.group(2)) if match else (1, part)
        if count <= 0:
            raise UserError(f"GPU count in '{part}' must be at least 1.")
        if len(gpus) + count > MAX_GPUS:
            raise UserError(f"The GPU spec '{text}' lists more than {MAX_GPUS} GPUs: one process drives at most {MAX_GPUS}.")
        card = find_card(size_text)
        if card is not None:
            name, size = card.name, card.total_bytes
        else:
            size = _size_or_card_error(size_text)
            name = f"GPU {_size_label(size)}"
        start = len(gpus)
        gpus.extend(Gpu(start + i, name, size) for i in range(count))
    return gpus


def _size_or_card_error(text: str) -> int:
    """A size, or a sentence naming the known cards when ``text`` looks like a card name."""
    try:
        return parse_size(text)
    except UserError:
        if re.search(r"[a-zA-Z]\d|\d{4}", text) and not re.fullmatch(r"\s*[0-9.]+\s*[a-zA-Z]*\s*", text):
            known = ", ".join(c.name for c in CARDS)
            raise UserError(f"GPU '{text.strip()}' is not a card the planner knows ({known}): give its memory "
                            "instead, like 4x40GiB.") from None
        raise


def _card_or_size_label(gpu: Gpu) -> str:
    card = find_card(gpu.name)
    return card.name if card is not None and card.total_bytes == gpu.total_bytes else _size_label(gpu.total_bytes)


def _size_label(size: int) -> str:
    if size % GIB == 0:
        return f"{size // GIB}GiB"
    if size % GB == 0:
        return f"{size // GB}GB"
    return f"{size / GIB:.1f}GiB"


def gpu_spec(gpus: list[Gpu]) -> str:
    """The spec string for a GPU list (``4x40GiB``, ``4xA800-40GB``, or comma-separated when mixed; ``cpu``)."""
    if len(gpus) == 1 and gpus[0].is_cpu:
        return "cpu"
    labels = [_card_or_size_label(g) for g in gpus]
    if labels and len(set(labels)) == 1:
        return f"{len(labels)}x{labels[0]}"
    return ",".join(labels)


def sample_memory() -> list[dict]:
    """Memory in use now, one dict per GPU (or one for the CPU process).

    Keys: device ('cuda:0' ... or 'cpu'), used_bytes (NVML: what nvidia-smi shows, all
    processes), peak_allocated_bytes / peak_reserved_bytes (this process's torch peaks,
    None where unknown).
    """
    from workbench import devices

    rows = []
    lib = devices.nvml()
    torch = _torch_if_cuda()
    if lib is not None:
        torch_count = torch.cuda.device_count() if torch is not None else 0
        for device in devices.visible():
            try:
                used = int(lib.nvmlDeviceGetMemoryInfo(devices.handle(device)).used)
            except Exception:
                continue
            peak_alloc = peak_res = None
            if torch is not None and device.index < torch_count:
                peak_alloc = int(torch.cuda.max_memory_allocated(device.index))
                peak_res = int(torch.cuda.max_memory_reserved(device.index))
            rows.append({"device": device.torch_name, "used_bytes": used,
                         "peak_allocated_bytes": peak_alloc, "peak_reserved_bytes": peak_res})
    if rows:
        return rows
    return [{"device": "cpu", "used_bytes": _resident_bytes(),
             "peak_allocated_bytes": None, "peak_reserved_bytes": None}]


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
