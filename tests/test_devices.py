"""One device inventory (workbench.devices): every CUDA_VISIBLE_DEVICES form maps NVML's GPUs to the
devices torch sees, and the planner, training checks, launcher and memory sampling count the same ones.

NVML is simulated: three GPUs, the last with two MIG instances. What CUDA (so torch) sees for each form
is written out by hand from CUDA's rules (indices, GPU-UUIDs and unique prefixes, MIG UUIDs; the list
ends at the first entry that names no device; "" and "-1" hide every GPU)."""

import pytest

from workbench import devices, hardware
from workbench.errors import UserError

GIB = 1024**3


class FakeNvml:
    """GPU 0: A100 40GB, GPU 1: A100 80GB, GPU 2: H100 80GB in MIG mode with two 1g.10gb instances."""

    class Info:
        def __init__(self, total, used):
            self.total, self.used = total, used

    GPUS = [("GPU-aaaa1111", b"NVIDIA A100-SXM4-40GB", 40), ("GPU-bbbb2222", b"NVIDIA A100-SXM4-80GB", 80),
            ("GPU-cccc3333", b"NVIDIA H100 80GB HBM3", 80)]
    MIGS = {2: [("MIG-dddd4444", 10), ("MIG-eeee5555", 10)]}

    def nvmlDeviceGetCount(self):
        return len(self.GPUS)

    def nvmlDeviceGetHandleByIndex(self, i):
        return ("gpu", i)

    def nvmlDeviceGetName(self, h):
        return self.GPUS[h[1]][1]

    def nvmlDeviceGetUUID(self, h):
        return self.GPUS[h[1]][0] if h[0] == "gpu" else self.MIGS[h[1]][h[2]][0]

    def nvmlDeviceGetMemoryInfo(self, h):
        total = self.GPUS[h[1]][2] if h[0] == "gpu" else self.MIGS[h[1]][h[2]][1]
        used = {"gpu": 1, "mig": 3}[h[0]] * GIB + h[1] * GIB + (h[2] if h[0] == "mig" else 0) * GIB
        return self.Info(total * GIB, used)

    def nvmlDeviceGetMigMode(self, h):
        return (1 if h[1] in self.MIGS else 0, 0)

    def nvmlDeviceGetMaxMigDeviceCount(self, h):
        return 7

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h, slot):
        if slot >= len(self.MIGS[h[1]]):
            raise RuntimeError("NVML_ERROR_NOT_FOUND")
        return ("mig", h[1], slot)


# CUDA_VISIBLE_DEVICES -> the devices torch numbers cuda:0, cuda:1, ... (their UUIDs), by CUDA's rules.
FORMS = {
    None: ["GPU-aaaa1111", "GPU-bbbb2222", "MIG-dddd4444", "MIG-eeee5555"],
    "1,0": ["GPU-bbbb2222", "GPU-aaaa1111"],
    "GPU-bbbb2222": ["GPU-bbbb2222"],
    "GPU-bbbb,GPU-aaaa1111": ["GPU-bbbb2222", "GPU-aaaa1111"],  # a unique prefix names its GPU
    "MIG-eeee5555": ["MIG-eeee5555"],
    "MIG-GPU-cccc3333/1/0": ["MIG-dddd4444"],  # CUDA 11.0's MIG form
    "0,GPU-bbbb2222": ["GPU-aaaa1111", "GPU-bbbb2222"],
    "": [],
    "-1": [],
    "0,-1,1": ["GPU-aaaa1111"],  # the list ends at the first entry that names no device
    "0,7": ["GPU-aaaa1111"],
    "GPU-zzzz": [],
    "GPU-": [],  # a prefix of every GPU names none of them
    "0,0": ["GPU-aaaa1111"],  # a repeated device ends the list
}


@pytest.fixture
def nvml(monkeypatch):
    monkeypatch.setattr(devices, "_nvml_state", {"module": FakeNvml()})
    return FakeNvml


@pytest.mark.parametrize("form", list(FORMS))
def test_every_cuda_visible_devices_form(form, nvml, monkeypatch):
    if form is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", form)
    expected = FORMS[form]
    seen = devices.visible()
    assert [d.uuid for d in seen] == expected
    assert [d.index for d in seen] == list(range(len(expected)))  # torch's cuda:N
    assert devices.count() == len(expected)
    # the planner's GPUs are the same devices, sized as NVML sizes them (a MIG instance: its own memory)
    sizes = {u: t for u, _, t in FakeNvml.GPUS} | {u: t for m in FakeNvml.MIGS.values() for u, t in m}
    assert [(g.index, g.total_bytes) for g in hardware.detect_gpus()] == [(i, sizes[u] * GIB)
                                                                         for i, u in enumerate(expected)]
    # memory sampling reads each cuda:N from that device's own NVML handle
    used = {"GPU-aaaa1111": 1, "GPU-bbbb2222": 2, "MIG-dddd4444": 5, "MIG-eeee5555": 6}
    rows = hardware.sample_memory()
    if expected:
        assert [(r["device"], r["used_bytes"]) for r in rows] == [(f"cuda:{i}", used[u] * GIB)
                                                                  for i, u in enumerate(expected)]
    else:
        assert [r["device"] for r in rows] == ["cpu"]


def test_a_map_may_name_only_gpus_torch_sees(nvml, monkeypatch):
    """A planned map for 2 GPUs on a process that sees one (a UUID form): refused before loading."""
    from workbench.settings import RunConfig
    from workbench.training.checks import check_device_map
    from workbench.training.launch_plan import local_gpu_count

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-bbbb2222")
    assert local_gpu_count() == 1
    check_device_map(RunConfig().replace(model={"device_map": {"": 0}}))
    with pytest.raises(UserError, match="GPU 1, but this machine has only 1 GPU"):
        check_device_map(RunConfig().replace(model={"device_map": {"model.visual": 0, "lm_head": 1}}))


def test_without_nvml_or_cuda_there_is_no_gpu(monkeypatch):
    monkeypatch.setattr(devices, "_nvml_state", {"module": None})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert devices.visible() == [] and devices.count() == 0 and hardware.detect_gpus() == []
