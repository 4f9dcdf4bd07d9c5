from pathlib import Path


def test_demo_reloads_through_the_real_loading_path(demo):
    from transformers import AutoProcessor, Qwen2VLForConditionalGeneration, Qwen2VLProcessor

    model = Qwen2VLForConditionalGeneration.from_pretrained(demo.model)
    processor = AutoProcessor.from_pretrained(demo.model)
    assert isinstance(processor, Qwen2VLProcessor)
    config = model.config
    assert config.model_type == "qwen2_vl"
    assert len(model.model.visual.blocks) == 2 and model.model.visual.merger is not None
    assert len(model.model.language_model.layers) == 2
    tok = processor.tokenizer
    for token in ("<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|endoftext|>"):
        assert tok.convert_tokens_to_ids(token) != tok.unk_token_id
        assert len(tok.encode(token, add_special_tokens=False)) == 1
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert model.get_input_embeddings().weight.shape[0] == len(tok)


def test_demo_dataset_is_swift_jsonl_with_existing_images(demo):
    import json

    rows = [json.loads(line) for line in demo.train.read_text().splitlines()]
    heldout = [json.loads(line) for line in demo.heldout.read_text().splitlines()]
    assert len(rows) >= 200 and len(heldout) >= 30
    for row in rows[:20] + heldout[:20]:
        assert row["messages"][0]["content"].count("<image>") == len(row["images"]) == 1
        assert (demo.data / row["images"][0]).is_file()
    answers = {r["messages"][-1]["content"] for r in heldout}
    assert len(answers) >= 6  # many colours, not one


def test_demo_build_is_deterministic(tmp_path):
    from workbench.demo import ensure_demo

    a, b = ensure_demo(tmp_path / "a"), ensure_demo(tmp_path / "b")
    assert a.train.read_bytes() == b.train.read_bytes()
    assert (a.model / "model.safetensors").read_bytes() == (b.model / "model.safetensors").read_bytes()
    assert Path(a.root, "COMPLETE").is_file()
