"""Planner accuracy: predicted vs measured memory of a LoRA training step.

    python benchmarks/planner_accuracy.py            # CUDA if present, else the CPU check
    python benchmarks/planner_accuracy.py --cpu      # the CPU check only (CI-sized, ~1 min)

CUDA: random bf16 Qwen2-VL from the 2B and 7B preset configs on one GPU (memory does not
depend on weight values), LoRA r8 on all language linears, gradient checkpointing, three
AdamW steps at max_length 1024 and 2048 with one image at max_pixels 1003520 (1280 visual
tokens); measured = torch.cuda.max_memory_reserved + the CUDA context (NVML used minus
torch reserved right after CUDA start-up); predicted = the planner's total for the device.

CPU: a tiny random Qwen2-VL (same code paths: SDPA, peft LoRA with dropout, mRoPE, one
image through the vision tower) at several sequence lengths. Every storage created during
one forward + backward is tracked until it is freed (a TorchDispatchMode plus weak
references), giving the peak of live tensor bytes. It is compared with the planner's
activation + logits terms (CPU masks) plus the LoRA gradients allocated during backward.
Weights, optimizer states and the CUDA overheads are not exercised on CPU.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import weakref
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_flatten  # noqa: E402

GIB = 1024**3
MIB = 1024**2


class LiveStorage(TorchDispatchMode):
    """Peak bytes of tensor storage created inside the mode and still referenced."""

    def __init__(self, existing=()):
        super().__init__()
        self.live = self.peak = 0
        self._refs: dict[int, weakref.ref] = {}
        self._existing = {t.untyped_storage().data_ptr() for t in existing}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            storage = t.untyped_storage()
            key, size = storage.data_ptr(), storage.nbytes()
            if size == 0 or key in self._refs or key in self._existing:
                continue
            self.live += size
            self.peak = max(self.peak, self.live)
            self._refs[key] = weakref.ref(storage, self._freed(key, size))
        return out

    def _freed(self, key: int, size: int):
        def callback(_ref):
            self.live -= size
            self._refs.pop(key, None)
        return callback


def tiny_config(vocab: int):
    from transformers import Qwen2VLConfig

    return Qwen2VLConfig(
        text_config={"hidden_size": 256, "intermediate_size": 704, "num_hidden_layers": 4, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "vocab_size": vocab, "max_position_embeddings": 8192,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [8, 12, 12], "rope_theta": 1e6}},
        vision_config={"depth": 2, "embed_dim": 64, "num_heads": 2, "hidden_size": 256, "mlp_ratio": 4},
        image_token_id=vocab - 4, video_token_id=vocab - 3, vision_start_token_id=vocab - 2,
        vision_end_token_id=vocab - 1, tie_word_embeddings=False)


def image_inputs(length: int, vocab: int, grid=(1, 16, 16), device="cpu"):
    """input_ids with one image (grid t x h x w patches -> t*h*w/4 tokens), pixel values, labels."""
    t, h, w = grid
    tokens = t * h * w // 4
    text = length - tokens - 2
    ids = torch.randint(0, vocab - 10, (1, length), device=device)
    ids[0, 5] = vocab - 2
    ids[0, 6:6 + tokens] = vocab - 4
    ids[0, 6 + tokens] = vocab - 1
    assert text > 6
    pixels = torch.randn(t * h * w, 3 * 2 * 14 * 14, device=device)
    kinds = torch.zeros_like(ids)
    kinds[0, 6:6 + tokens] = 1  # image tokens, for the multimodal RoPE positions
    return {"input_ids": ids, "mm_token_type_ids": kinds, "attention_mask": torch.ones_like(ids), "pixel_values": pixels,
            "image_grid_thw": torch.tensor([[t, h, w]], device=device), "labels": ids.clone()}


def lora_model(config, dtype=torch.bfloat16, device="cpu", checkpointing=True):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLForConditionalGeneration

    from workbench.settings import TARGET_PRESETS

    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = Qwen2VLForConditionalGeneration(config)
    finally:
        torch.set_default_dtype(previous)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.05,
                                             target_modules=TARGET_PRESETS["language-all-linear"]))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    return model


def predicted(folder: str, length: int, visual_tokens: int, checkpointing: bool, device_kind: str, gpu_bytes: int):
    from dataclasses import replace

    from workbench.hardware import Gpu
    from workbench.planner import PlanRequest
    from workbench.planner.device_map import evaluate
    from workbench.planner.plan import layout_for, step_for

    # the measured step computes the model's own loss over every token
    request = PlanRequest(folder, [Gpu(0, "bench", gpu_bytes)], max_length=length,
                          max_pixels=visual_tokens * 784, gradient_checkpointing=checkpointing,
                          loss_on_trained_tokens_only=False)
    layout = layout_for(request)
    step = replace(step_for(request, layout, device_kind=device_kind))
    rows, _ = evaluate(layout, {"": 0}, step, 1)
    return rows[0], layout


def cpu_check(lengths=(256, 512, 1024, 2048), vocabs=(32000, 1024)) -> list[dict]:
    """A logits-dominated (vocab 32000) and a layer-dominated (vocab 1024) tiny model."""
    results = []
    for vocab in vocabs:
        results += _cpu_check_vocab(lengths, vocab)
    return results


def _cpu_check_vocab(lengths, vocab: int) -> list[dict]:
    config = tiny_config(vocab)
    config.text_config.bos_token_id = config.text_config.eos_token_id = 0
    folder = tempfile.mkdtemp(prefix="planner-bench-")
    config.save_pretrained(folder)
    results = []
    for checkpointing in (True, False):
        model = lora_model(config, checkpointing=checkpointing)
        existing = list(model.parameters()) + list(model.buffers())
        for length in lengths:
            batch = image_inputs(length, vocab)
            batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
            model.zero_grad(set_to_none=True)
            with LiveStorage(existing) as tracker:
                loss = model(**batch).loss
                loss.backward()
            row, layout = predicted(folder, length, 64, checkpointing, "cpu", 1 << 40)
            lora_grads = 4 * layout.lora_params
            act_pred = row["activation_bytes"] + row["logits_bytes"] + lora_grads
            results.append({"vocab": vocab, "checkpointing": checkpointing, "max_length": length, "measured_bytes": tracker.peak,
                            "predicted_bytes": act_pred, "error": act_pred / tracker.peak - 1,
                            "logits_bytes": row["logits_bytes"], "activation_bytes": row["activation_bytes"]})
            print(f"cpu vocab {vocab:5d} gc={'on ' if checkpointing else 'off'} len {length:5d}: measured {tracker.peak / MIB:8.1f} MiB"
                  f"  predicted {act_pred / MIB:8.1f} MiB  error {100 * (act_pred / tracker.peak - 1):+5.1f}%", flush=True)
    return results


def cuda_check(presets=("qwen2-vl-2b-instruct", "qwen2-vl-7b-instruct"), lengths=(1024, 2048)) -> list[dict]:
    import pynvml

    from workbench.hardware import Gpu
    from workbench.models import load_model_config
    from workbench.planner import PlanRequest, plan_memory

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    name = torch.cuda.get_device_name()
    capacity = torch.cuda.get_device_properties(0).total_memory
    results = []
    for preset in presets:
        config = load_model_config(preset)
        vocab = config.text_config.vocab_size
        for length in lengths:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.init()
            torch.zeros(1, device="cuda")
            context = pynvml.nvmlDeviceGetMemoryInfo(handle).used - torch.cuda.memory_reserved()
            model = lora_model(config, device="cuda")
            optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
            for _ in range(3):
                batch = image_inputs(length, 151_000, grid=(1, 64, 80), device="cuda")
                batch["input_ids"][batch["input_ids"] == 151_000 - 4] = config.image_token_id
                batch["input_ids"][0, 5], batch["input_ids"][0, 6 + 1280] = config.vision_start_token_id, config.vision_end_token_id
                batch["labels"] = batch["input_ids"].clone()
                batch["pixel_values"] = batch["pixel_values"].to(torch.bfloat16)
                loss = model(**batch).loss
                loss.backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            measured = torch.cuda.max_memory_reserved() + context
            plan = plan_memory(PlanRequest(preset, [Gpu(0, name, capacity)], max_length=length, max_pixels=1003520,
                                            strategy="device_map", loss_on_trained_tokens_only=False))
            pred = plan.devices[0]["total_bytes"]
            results.append({"gpu": name, "model": preset, "max_length": length, "measured_bytes": measured,
                            "predicted_bytes": pred, "error": pred / measured - 1, "vocab": vocab})
            print(f"{name} {preset} len {length}: measured {measured / GIB:.2f} GiB predicted {pred / GIB:.2f} GiB "
                  f"error {100 * (pred / measured - 1):+.1f}%", flush=True)
            del model, optimizer, loss
    return results


def published_check() -> list[dict]:
    """Weights + CUDA context vs the published bf16 inference figures (input length 1, GiB)."""
    from workbench.models import build_meta_model, count_parameters, load_model_config
    from workbench.planner import terms

    published = {"qwen2-vl-2b-instruct": (4.68, 1), "qwen2-vl-7b-instruct": (16.07, 1), "qwen2-vl-72b-instruct": (138.74, 2)}
    rows = []
    for preset, (gib, gpus) in published.items():
        weights = 2 * count_parameters(build_meta_model(load_model_config(preset)))
        ours = (weights + gpus * terms.CUDA_CONTEXT_BYTES) / GIB
        rows.append({"model": preset, "published_gib": gib, "weights_plus_context_gib": round(ours, 2),
                     "error": ours / gib - 1})
        print(f"published {preset}: {gib:.2f} GiB, weights + context {ours:.2f} GiB ({100 * (ours / gib - 1):+.1f}%)")
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="Run the CPU check even where CUDA is present.")
    parser.add_argument("--lengths", default="256,512,1024,2048", help="CPU check sequence lengths.")
    parser.add_argument("--json", default="", help="Also write the results to this JSON file.")
    args = parser.parse_args()
    started = time.time()
    out = {"published": published_check()}
    if torch.cuda.is_available() and not args.cpu:
        out["cuda"] = cuda_check()
    else:
        if not torch.cuda.is_available():
            print("No CUDA device: measuring the activation and logits terms on CPU at small scale.")
        out["cpu"] = cpu_check(tuple(int(x) for x in args.lengths.split(",")))
    print(f"done in {time.time() - started:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
