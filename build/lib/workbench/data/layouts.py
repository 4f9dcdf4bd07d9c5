"""Row layouts that are one conversation written another way, rewritten as ms-swift messages.

- ms-swift ``query`` / ``response`` / ``history`` (``[[query, response], ...]``) / ``system``;
- LLaMA-Factory alpaca: ``instruction`` + ``input`` (joined by a newline, as LLaMA-Factory
  joins them), ``output``, ``system``, ``history``; a ``dataset_info.json`` entry's ``columns``
  renames any of them (``prompt``, ``query``, ``response``, ``history``, ``system``, ``images``);
- The Cauldron: ``texts`` (``[{"user", "assistant", "source"}, ...]``) + ``images``.

Everything else the record carries (``images``, ``image``, ``objects``, ``videos``, ...) is
kept, so the ms-swift parser sees and checks it as in any other row.
"""

from __future__ import annotations

from workbench.data.problems import MISSING_FIELD, WRONG_TYPE
from workbench.data.parsers import RowError

QUERY_RESPONSE, ALPACA, CAULDRON = "query-response", "alpaca", "cauldron"
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": "history",
                  "system": "system", "images": "images"}


def layout_of(record) -> str | None:
    """The layout of a record that is not a message list, from its keys."""
    if not isinstance(record, dict):
        return None
    if "query" in record and "response" in record:
        return QUERY_RESPONSE
    if "instruction" in record and "output" in record:
        return ALPACA
    texts = record.get("texts")
    if isinstance(texts, list) and texts and all(isinstance(t, dict) and "user" in t for t in texts):
        return CAULDRON
    return None


def _text(value, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise RowError(WRONG_TYPE, f"'{name}' is a {type(value).__name__}, expected text")
    return value


def _history(value, name: str) -> list[dict]:
    if value in (None, ""):
        return []
    if not isinstance(value, list):
        raise RowError(WRONG_TYPE, f"'{name}' must be a list of [query, response] pairs")
    out = []
    for i, pair in enumerate(value, start=1):
        if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
            raise RowError(WRONG_TYPE, f"'{name}' entry {i} is not a [query, response] pair")
        out += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    return out


def _rest(record: dict, used) -> dict:
    return {k: v for k, v in record.items() if k not in used}


def as_swift(record: dict, layout: str, mapping: dict | None = None) -> dict:
    """The record as ms-swift ``{"messages": [...], ...}`` (RowError for a field of the wrong shape)."""
    if layout == QUERY_RESPONSE:
        system = _text(record.get("system"), "system")
        messages = ([{"role": "system", "content": system}] if system else []) + _history(record.get("history"),
                                                                                           "history")
        messages += [{"role": "user", "content": record["query"]}, {"role": "assistant", "content": record["response"]}]
        return {**_rest(record, ("query", "response", "history", "system")), "messages": messages}
    if layout == ALPACA:
        columns = {**ALPACA_COLUMNS, **((mapping or {}).get("columns") or {})}
        prompt = _text(record.get(columns["prompt"]), columns["prompt"])
        query = _text(record.get(columns["query"]), columns["query"])
        system = _text(record.get(columns["system"]), columns["system"])
        messages = ([{"role": "system", "content": system}] if system else []) + _history(
            record.get(columns["history"]), columns["history"])
        messages += [{"role": "user", "content": "\n".join(p for p in (prompt, query) if p)},
                     {"role": "assistant", "content": record.get(columns["response"])}]
        rest = _rest(record, {columns[k] for k in ("prompt", "query", "response", "history", "system")})
        if columns["images"] != "images" and columns["images"] in rest:
            rest["images"] = rest.pop(columns["images"])
        return {**rest, "messages": messages}
    if layout == CAULDRON:
        messages = []
        for i, turn in enumerate(record["texts"], start=1):
            if not isinstance(turn, dict) or "assistant" not in turn:
                raise RowError(MISSING_FIELD, f"'texts' entry {i} needs 'user' and 'assistant'")
            messages += [{"role": "user", "content": turn.get("user")},
                         {"role": "assistant", "content": turn.get("assistant")}]
        return {**_rest(record, ("texts",)), "messages": messages}
    raise ValueError(layout)
