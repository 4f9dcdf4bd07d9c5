"""GPU specs, detection without a driver, memory sampling."""

import pytest

from workbench import devices, hardware
from workbench.errors import UserError
from workbench.hardware import GB, GIB, Gpu, gpu_spec, parse_gpu_spec


def test_parse_counts_and_units():
    assert parse_gpu_spec("4x40GiB") == [Gpu(i, "GPU 40GiB", 40 * GIB) for i in range(4)]
    assert [g.total_bytes for g in parse_gpu_spec("2x80GB")] == [80 * GB, 80 * GB]
    mixed = parse_gpu_spec("40GiB, 40GiB,24GiB")
    assert [g.index for g in mixed] == [0, 1, 2]
    assert [g.total_bytes for g in mixed] == [40 * GIB, 40 * GIB, 24 * GIB]
    assert [g.total_bytes for g in parse_gpu_spec("2X24G,1x80GiB")] == [24 * GIB, 24 * GIB, 80 * GIB]


@pytest.mark.parametrize("spec", ["", "0x40GiB", "-1x40GiB", "4x0GiB", "4x-40GiB", "4x40XB", "abc",
                                  "1x100TiB", "100x40GiB", "4x40MB", "4x"])
def test_bad_specs_are_user_errors(spec):
    with pytest.raises(UserError):
        parse_gpu_spec(spec)


def test_spec_round_trip():
    assert gpu_spec(parse_gpu_spec("4x40GiB")) == "4x40GiB"
    assert gpu_spec(parse_gpu_spec("40GiB,24GiB")) == "40GiB,24GiB"


def test_detect_without_driver_is_empty(monkeypatch):
    monkeypatch.setattr(devices, "_nvml_state", {"module": None})
    assert hardware.detect_gpus() == []


def test_sample_on_cpu_reports_resident_memory(monkeypatch):
    monkeypatch.setattr(devices, "_nvml_state", {"module": None})
    rows = hardware.sample_memory()
    assert len(rows) == 1 and rows[0]["device"] == "cpu" and rows[0]["used_bytes"] > 10 * 1024**2
    assert set(rows[0]) == {"device", "used_bytes", "peak_allocated_bytes", "peak_reserved_bytes"}


class FakeNvml:
    class Info:
        def __init__(self, total, used):
            self.total, self.used = total, used

    def nvmlDeviceGetCount(self):
        return 2

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetName(self, h):
        return b"NVIDIA A800-SXM4-40GB"

    def nvmlDeviceGetUUID(self, h):
        return f"GPU-{h}000"

    def nvmlDeviceGetMigMode(self, h):
        raise RuntimeError("not supported")

    def nvmlDeviceGetMemoryInfo(self, h):
        return self.Info(40 * GIB, (h + 1) * GIB)


def test_detect_and_sample_with_nvml(monkeypatch):
    monkeypatch.setattr(devices, "_nvml_state", {"module": FakeNvml()})
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    gpus = hardware.detect_gpus()
    assert gpus == [Gpu(0, "NVIDIA A800-SXM4-40GB", 40 * GIB), Gpu(1, "NVIDIA A800-SXM4-40GB", 40 * GIB)]
    rows = hardware.sample_memory()
    assert [(r["device"], r["used_bytes"]) for r in rows] == [("cuda:0", GIB), ("cuda:1", 2 * GIB)]


def test_cuda_visible_devices_renumbers(monkeypatch):
    monkeypatch.setattr(devices, "_nvml_state", {"module": FakeNvml()})
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [g.index for g in hardware.detect_gpus()] == [0]
    assert [r["used_bytes"] for r in hardware.sample_memory()] == [2 * GIB]


# ---- GPU names as capacities (issue 12) -----------------------------------------------------------
@pytest.mark.parametrize("spec,name,gib", [
    ("4xA800-40GB", "A800-40GB", 39.59), ("4xA100-40GB", "A100-40GB", 39.59), ("8xH100", "H100-80GB", 79.11),
    ("2x4090", "RTX4090-24GB", 23.64), ("2xRTX4090", "RTX4090-24GB", 23.64), ("1xA800-80GB", "A800-80GB", 79.33)])
def test_cards_resolve_to_the_memory_the_driver_reports(spec, name, gib):
    gpus = parse_gpu_spec(spec)
    assert len(gpus) == int(spec.split("x")[0]) and {g.name for g in gpus} == {name}
    assert {g.total_bytes for g in gpus} == {int(gib * GIB)}
    assert gpu_spec(gpus) == f"{len(gpus)}x{name}"  # the spec round-trips by card name
    assert parse_gpu_spec(gpu_spec(gpus)) == gpus


def test_card_names_as_nvml_reports_them():
    card = hardware.find_card("NVIDIA A100-SXM4-40GB")
    assert card.name == "A100-40GB" and card.link.startswith("nvlink")
    assert hardware.find_card("NVIDIA GeForce RTX 4090").name == "RTX4090-24GB"
    pcie = hardware.find_card("NVIDIA A100 80GB PCIe")  # same memory, no NVLink
    assert pcie.name == "A100-80GB-PCIe" and pcie.link == "pcie4" and pcie.total_gib == 79.25
    assert hardware.find_card("40GiB") is None and hardware.find_card("80") is None


def test_every_card_has_a_source_and_sensible_figures():
    for card in hardware.CARDS:
        assert card.source and 0.85 * card.memory_gb < card.total_gib * GIB / 1e9 <= card.memory_gb * 1.1, card
        assert card.link in hardware.LINK_GBPS and card.bf16_tflops > 0
    assert len({c.name for c in hardware.CARDS}) == len(hardware.CARDS)


@pytest.mark.parametrize("spec,words", [("4xA100", "A100-40GB or A100-80GB"), ("4xB200", "not a card the planner knows"),
                                        ("2xH100-40GB", "not a card the planner knows")])
def test_unknown_or_ambiguous_cards_are_user_errors(spec, words):
    with pytest.raises(UserError, match=words):
        parse_gpu_spec(spec)


def test_usable_gives_detected_cards_their_driver_capacity():
    detected = [Gpu(0, "NVIDIA A800-SXM4-40GB", 40 * GIB), Gpu(1, "Some future GPU", 96 * GIB)]
    assert hardware.usable(detected) == [Gpu(0, "A800-40GB", int(39.59 * GIB)), detected[1]]
