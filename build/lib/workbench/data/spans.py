"""Which characters of a rendered conversation are trained: the chat template's own spans.

Each answer is cut out of the rendered text where the template puts it: the conversation
before assistant turn k, rendered with the generation prompt, ends exactly where the answer
starts (``...<|im_start|>assistant\\n``), and the conversation through turn k ends after its
``<|im_end|>\\n``. The text is then tokenized piece by piece, prompt apart from answer, as
LLaMA-Factory and ms-swift encode: an answer is the tokens the model generates after its
prompt, so one that starts with "\\n\\n" trains its own newline tokens (tokenizing the whole
text would merge them with the header's newline and train none of them).

A template whose earlier turns render differently once later turns follow (Qwen3's thinking
template drops earlier think blocks) has no such prefixes: ``template_segments`` returns None
and the encoder falls back to searching the token ids for assistant headers
(``workbench.data.collate.assistant_mask``).
"""

from __future__ import annotations

END = "<|im_end|>"


def template_segments(render, messages: list[dict], trained: list[bool]) -> list[tuple[str, bool]] | None:
    """The rendered conversation as (text, trained) pieces, or None when the template has no
    prefix spans. ``render(messages, add_generation_prompt)`` is the model's chat template;
    ``trained[k]`` says whether message k (an assistant turn) is learned."""
    full = render(messages, False)
    segments: list[tuple[str, bool]] = []
    start = 0
    for k, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prompt = render(messages[:k], True)
        through = render(messages[:k + 1], False)
        if len(prompt) < start or not through.startswith(prompt) or not full.startswith(through):
            return None
        end = through.rfind(END)
        if end < len(prompt):
            return None
        end += len(END)
        segments.append((full[start:len(prompt)], False))
        segments.append((full[len(prompt):end], bool(trained[k])))
        start = end
    segments.append((full[start:], False))
    return [(text, flag) for text, flag in segments if text]
