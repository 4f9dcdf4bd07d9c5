"""The loss on trained tokens equals the model's full-vocabulary loss, in value and in gradients."""

import pytest
import torch

from workbench.data.collate import IGNORE_INDEX
from workbench.training import loss as loss_module
from workbench.training.loss import TrainedTokenLoss, chunk_tokens, shifted_labels

VOCAB = 512


def tiny_lora_model(modules_to_save=None, checkpointing=True, tie=False):
    from peft import LoraConfig, get_peft_model
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    from workbench.settings import TARGET_PRESETS

    config = Qwen2VLConfig(
        text_config={"hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 4,
                     "num_key_value_heads": 2, "vocab_size": VOCAB, "max_position_embeddings": 1024,
                     "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0, "initializer_range": 0.2,
                     "rope_parameters": {"rope_type": "default", "mrope_section": [2, 3, 3], "rope_theta": 1e4}},
        vision_config={"depth": 1, "embed_dim": 32, "num_heads": 2, "hidden_size": 64, "mlp_ratio": 2},
        image_token_id=VOCAB - 4, video_token_id=VOCAB - 3, vision_start_token_id=VOCAB - 2,
        vision_end_token_id=VOCAB - 1, tie_word_embeddings=tie)
    torch.manual_seed(0)
    model = Qwen2VLForConditionalGeneration(config)
    model = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False,
                                             target_modules=TARGET_PRESETS["language-all-linear"],
                                             modules_to_save=modules_to_save))
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.train()
    return model


def batch(lengths=(40, 28), answer=5):
    """Right-padded rows, each with one 4-token image and an answer of ``answer`` trained tokens."""
    torch.manual_seed(1)
    longest = max(lengths)
    ids = torch.zeros(len(lengths), longest, dtype=torch.long)
    labels = torch.full_like(ids, IGNORE_INDEX)
    attention = torch.zeros_like(ids)
    kinds = torch.zeros_like(ids)
    for row, n in enumerate(lengths):
        ids[row, :n] = torch.randint(2, VOCAB - 10, (n,))
        ids[row, 2], ids[row, 3:7], ids[row, 7] = VOCAB - 2, VOCAB - 4, VOCAB - 1
        kinds[row, 3:7] = 1
        attention[row, :n] = 1
        labels[row, n - answer:n] = ids[row, n - answer:n]
    pixels = torch.randn(2 * 16, 3 * 2 * 14 * 14)
    grid = torch.tensor([[1, 4, 4], [1, 4, 4]])
    return {"input_ids": ids, "attention_mask": attention, "mm_token_type_ids": kinds, "labels": labels,
            "pixel_values": pixels, "image_grid_thw": grid}


def full_loss(model, inputs, num_items):
    return model(**inputs, num_items_in_batch=num_items).loss


def trained_token_loss(model, inputs, num_items):
    func = TrainedTokenLoss(model)
    forward = func.forward_inputs(inputs)
    labels = forward.pop("labels")
    outputs = model(**forward)
    assert outputs.logits.numel() == 0  # no position went through lm_head in the forward
    return func(outputs, labels, num_items)


def trained_token_loss_in_forward(model, inputs, num_items):
    """The FSDP2 way: lm_head inside the forward at the trained positions only."""
    func = TrainedTokenLoss(model)
    func._in_forward = True
    forward = func.forward_inputs(inputs)
    labels = forward.pop("labels")
    outputs = model(**forward)
    assert outputs.logits.shape[0] == int((inputs["labels"][:, 1:] != IGNORE_INDEX).sum())
    return func(outputs, labels, num_items)


def assert_same_gradients(ours: dict, full: dict) -> None:
    """Equal up to float32 rounding: 1e-5 of each tensor's largest entry."""
    assert ours.keys() == full.keys() and len(full) > 10
    for name, expected in full.items():
        scale = float(expected.abs().max())
        torch.testing.assert_close(ours[name], expected, rtol=1e-5, atol=1e-5 * scale + 1e-12, msg=name)


def grads(model):
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("chunk_elements", [1 << 26, 3 * VOCAB])  # one chunk; chunks of 3 tokens
@pytest.mark.parametrize("num_items", [None, 23])
@pytest.mark.parametrize("ours", [trained_token_loss, trained_token_loss_in_forward])
def test_value_and_gradients_match_the_full_loss(monkeypatch, chunk_elements, num_items, ours):
    monkeypatch.setattr(loss_module, "CHUNK_ELEMENTS", chunk_elements)
    inputs = batch()
    results = []
    for compute in (full_loss, ours):
        model = tiny_lora_model()
        value = compute(model, inputs, None if num_items is None else torch.tensor(num_items))
        value.backward()
        results.append((value.detach(), grads(model)))
    (full, full_grads), (ours, our_grads) = results
    torch.testing.assert_close(ours, full, rtol=1e-6, atol=1e-6)
    assert_same_gradients(our_grads, full_grads)
    assert any(float(g.abs().sum()) > 0 for g in our_grads.values())


def test_a_trained_lm_head_and_tied_embeddings_get_the_same_gradients():
    inputs = batch()
    for kwargs, ours in (({"modules_to_save": ["lm_head"]}, trained_token_loss), ({"tie": True}, trained_token_loss),
                         ({"modules_to_save": ["lm_head"]}, trained_token_loss_in_forward)):
        results = []
        for compute in (full_loss, ours):
            model = tiny_lora_model(**kwargs)
            compute(model, inputs, torch.tensor(10)).backward()
            results.append(grads(model))
        if "modules_to_save" in kwargs:
            assert any("lm_head" in n for n in results[1])
        assert_same_gradients(results[1], results[0])


@pytest.mark.parametrize("ours", [trained_token_loss, trained_token_loss_in_forward])
def test_a_batch_without_trained_tokens_still_back_propagates(ours):
    inputs = batch()
    inputs["labels"][:] = IGNORE_INDEX
    model = tiny_lora_model()
    value = ours(model, inputs, torch.tensor(1))
    value.backward()
    assert float(value.detach()) == 0.0
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_only_the_shifted_trained_positions_count():
    labels = torch.tensor([[IGNORE_INDEX, IGNORE_INDEX, 7, 8, IGNORE_INDEX]])
    assert shifted_labels(labels).tolist() == [[IGNORE_INDEX, 7, 8, IGNORE_INDEX, IGNORE_INDEX]]
    assert chunk_tokens(152064) == 441 and chunk_tokens(10) == (1 << 26) // 10


def test_chunks_bound_the_logits_memory():
    """With many trained tokens, the loss never holds more than one chunk's logits (tracked on CPU)."""
    from benchmarks.planner_accuracy import LiveStorage
    from workbench.training.loss import trained_token_loss_sum

    torch.manual_seed(0)
    vocab = 4096  # logits dominate the hidden-sized tensors, as in a real model
    lm_head = torch.nn.Linear(64, vocab, bias=False).requires_grad_(False)
    labels = torch.randint(0, vocab, (2, 200))
    labels[:, :50] = IGNORE_INDEX  # 2 x 150 trained positions
    states = torch.randn(2, 200, 64)
    peaks, values = {}, {}
    for chunk in (1000, 16):
        hidden = states.clone().requires_grad_()
        with LiveStorage(list(lm_head.parameters()) + [hidden, labels]) as tracker:
            total, count = trained_token_loss_sum(lm_head, hidden, labels, chunk)
            total.backward()
        peaks[chunk], values[chunk] = tracker.peak, float(total)
    assert count == 300 and values[16] == pytest.approx(values[1000], rel=1e-6)
    assert peaks[1000] > 12 * 300 * vocab  # one chunk of all 300 tokens
    assert peaks[16] < 12 * 32 * vocab  # about one chunk of 16 at a time, plus hidden-sized tensors


@pytest.mark.parametrize("dtype, tolerance", [("fp32", 1e-5), ("bf16", 2e-3)])
def test_trainer_steps_match_with_and_without_it(demo, demo_config, tmp_path, dtype, tolerance):
    """Same data, same init: one optimizer step over 2 accumulated micro-batches gives the same
    logged loss, gradient norm, eval loss and LoRA weights whether the loss is on trained tokens
    or full; in bf16 too, where accelerate's mixed precision hands the outputs back in fp32."""
    from workbench.data.collate import Collator
    from workbench.training.job import trainer_class
    from workbench.training.loading import load_model
    from workbench.training.lora import apply_lora
    from workbench.training.inputs import build_datasets, build_trainer_args

    config = demo_config.replace(
        data={"eval_split": 0.05},
        training={"max_steps": 1, "save_steps": 0, "warmup_ratio": 0.0, "output_dir": str(tmp_path),
                  "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2, "logging_steps": 1},
        lora={"dropout": 0.0}, model={"dtype": dtype})
    path = str(demo.model)
    train, evaluation, processor = build_datasets(config, path)
    outcomes = []
    for on in (False, True):
        torch.manual_seed(0)
        model = apply_lora(load_model(path, config), config.lora, True)
        trainer = trainer_class()(model=model, args=build_trainer_args(config, False), train_dataset=train,
                                  data_collator=Collator(processor.tokenizer.pad_token_id),
                                  loss_on_trained_tokens_only=on)
        assert (trainer.compute_loss_func is not None) == on
        trainer.train()
        # Adam's first step hardly depends on the gradient's scale: the logged norm does
        logged = [(r["loss"], r["grad_norm"]) for r in trainer.state.log_history if "loss" in r]
        evaluated = trainer.evaluate(evaluation)["eval_loss"]
        weights = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}
        outcomes.append((logged, evaluated, weights))
    (full_log, full_eval, full_w), (our_log, our_eval, our_w) = outcomes
    assert len(our_log) == 1 and our_log[0] == pytest.approx(full_log[0], rel=tolerance)
    assert our_eval == pytest.approx(full_eval, rel=tolerance)
    for name in full_w:
        torch.testing.assert_close(our_w[name], full_w[name], rtol=100 * tolerance, atol=1e-6, msg=name)
