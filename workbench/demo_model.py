"""The demos' tiny models: a BPE tokenizer trained on the demo's words, the family's processor
and chat template, and its model class at toy sizes, briefly taught to say "I do not know."."""

from __future__ import annotations

from workbench.demo_words import (BASE_ANSWER, BASE_PRETRAIN_STEPS, DEMO_TRAINING, GENERIC_QUESTIONS, QUESTIONS,
                                  SHAPES, tokenizer_corpus)
from workbench.models.families import QWEN2_VL, Family

SPECIAL_TOKENS = [
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
]


def build_tokenizer(chat_template: str):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=600, special_tokens=SPECIAL_TOKENS, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    bpe.train_from_iterator(tokenizer_corpus(), trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
        additional_special_tokens=SPECIAL_TOKENS[1:], model_max_length=32768,
        chat_template=chat_template, padding_side="right",
    )


def build_processor(family: Family = QWEN2_VL, tokenizer=None):
    """The family's processor around ``tokenizer`` (default: the demo's BPE), its published template."""
    template = family.template_text
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer(template)
    patch = int(family.demo_vision.get("patch_size", 14))
    image_processor = family.transformers_class("image_processor_class")(
        min_pixels=DEMO_TRAINING["data"]["min_pixels"], max_pixels=DEMO_TRAINING["data"]["max_pixels"],
        patch_size=patch,
    )
    video_processor = family.transformers_class("video_processor_class")(patch_size=patch)
    return family.transformers_class("processor_class")(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=video_processor, chat_template=template)


def demo_model_config(tokenizer, family: Family = QWEN2_VL, vocab_size: int | None = None):
    """The tiny config of ``family``: 2 decoder layers of width 64, a 2-block tower (``family.demo_vision``)."""
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    hidden, heads = 64, 4
    text = {
        "vocab_size": vocab_size or len(tokenizer), "hidden_size": hidden, "intermediate_size": 128,
        "num_hidden_layers": 2, "num_attention_heads": heads, "num_key_value_heads": 2,
        "max_position_embeddings": 4096, "rms_norm_eps": 1e-6,
        # head_dim 16 -> 8 rotary frequencies split over (time, height, width)
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        "initializer_range": 0.2,
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    text.update(family.demo_text)
    vision = {"spatial_merge_size": 2, "temporal_patch_size": 2, "in_channels": 3, **family.demo_vision}
    return family.transformers_class("config_class")(
        text_config=text, vision_config=vision,
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False, architectures=[family.model_class],
    )


def build_model(tokenizer, family: Family = QWEN2_VL, teach: bool = True):
    import torch

    torch.manual_seed(0)
    model = family.transformers_class("model_class")(demo_model_config(tokenizer, family))
    model.generation_config.eos_token_id = [tokenizer.convert_tokens_to_ids("<|im_end|>"),
                                            tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    if teach:
        teach_base_answer(model, tokenizer)
    return model


def teach_base_answer(model, tokenizer, steps: int = BASE_PRETRAIN_STEPS) -> None:
    """A few full-parameter steps on text-only chat rows: every question -> BASE_ANSWER."""
    import torch

    from workbench.data.collate import IGNORE_INDEX, assistant_mask

    questions = [q.format(shape=s) for q in QUESTIONS for s in SHAPES] + list(GENERIC_QUESTIONS)
    header = tokenizer.encode("<|im_start|>assistant\n", add_special_tokens=False)
    end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    rows = []
    for question in questions:
        text = tokenizer.apply_chat_template([{"role": "user", "content": question},
                                              {"role": "assistant", "content": BASE_ANSWER}], tokenize=False)
        ids = tokenizer.encode(text, add_special_tokens=False)
        rows.append((ids, [i if m else IGNORE_INDEX for i, m in zip(ids, assistant_mask(ids, header, end))]))
    longest = max(len(ids) for ids, _ in rows)
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor([ids + [pad] * (longest - len(ids)) for ids, _ in rows])
    labels = torch.tensor([lab + [IGNORE_INDEX] * (longest - len(lab)) for _, lab in rows])
    attention = (input_ids != pad).long()
    optimizer = torch.optim.AdamW([p for n, p in model.named_parameters() if "visual" not in n], lr=3e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # see workbench.training.loading.tiny_model_threads
    try:
        model.train()
        for _ in range(steps):
            loss = model(input_ids=input_ids, attention_mask=attention, labels=labels).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        model.eval()
    finally:
        torch.set_num_threads(threads)


