"""One record -> one Sample, per format (ms-swift, LLaMA-Factory sharegpt, chat content parts).

A parser raises ``RowError`` (a problem kind and one sentence) for a bad row; ``load_samples``
in ``workbench.data.formats`` turns it into a ``Problem``. Image references are normalised
here (``workbench.data.refs``): paths absolute, file URIs as paths, the rest as written.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from workbench.data.grounding import GroundingError, read_objects
from workbench.data.problems import (AUDIO, EMPTY_CONTENT, GROUNDING, IMAGE_COUNT, MISSING_FIELD, NO_ASSISTANT,
                                     UNKNOWN_ROLE, WRONG_TYPE, BadImage, clip)
from workbench.data.refs import is_image_part, normalise, part_reference
from workbench.data.sample import IMAGE_OPTIONS, IMAGE_TAG, MEDIA_TAG, ROLES, VIDEO_TAG, Sample, Turn
from workbench.data.videos import VIDEO_EXTENSIONS as VIDEO_SUFFIXES, VIDEO_OPTIONS

AUDIO_TAG = "<audio>"
VIDEO_PART_TYPES = ("video", "video_url", "input_video")
AUDIO_PART_TYPES = ("audio", "audio_url", "input_audio")
_VIDEO_KEYS = ("video", "video_url", "url", "path", "value")
# qwen-vl-utils' keys, and the video_-prefixed names other tools (LLaMA-Factory, ms-swift) give the pixel limits
_OPTION_ALIASES = {"video_min_pixels": "min_pixels", "video_max_pixels": "max_pixels",
                   "video_total_pixels": "total_pixels", "video_fps": "fps", "video_maxlen": "max_frames"}
_FLOAT_OPTIONS = ("fps", "sample_fps", "video_start", "video_end")

# LLaMA-Factory's sharegpt defaults (its dataset_info.json may override any of them).
SHAREGPT_COLUMNS = {"messages": "conversations", "images": "images", "system": None}
SHAREGPT_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human",
                 "assistant_tag": "gpt", "system_tag": "system"}


class RowError(ValueError):
    """A row-level problem raised inside a parser; ``load_samples`` turns it into a Problem."""

    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def _image_list(record: dict, key: str = "images") -> list:
    """The record's ``images`` entries (or its singular ``image``, as Qwen's fine-tuning README and LLaVA
    write it): reference strings, or parts/dicts that carry one."""
    images = record.get(key)
    if images is None and key == "images" and record.get("image") not in (None, "", []):
        key, images = "image", record["image"]
    if images is None:
        return []
    if isinstance(images, (str, dict)):
        images = [images]
    if not isinstance(images, list):
        raise RowError(MISSING_FIELD, f"'{key}' must be a list of images (paths, URLs or data URIs)")
    out = []
    for i, entry in enumerate(images, start=1):
        try:
            ref = part_reference(entry)
        except BadImage as exc:
            raise RowError(exc.kind, f"'{key}' entry {i}: {exc}") from None
        if not isinstance(ref, str) or not ref:
            raise RowError(MISSING_FIELD, f"'{key}' entry {i} is not an image reference: give a path, an http(s) "
                                          "URL or a data URI (or {'path': ...} / {'url': ...})")
        out.append(ref)
    return out


def _refuse_audio(record, turns: list[Turn]) -> None:
    """Audio: never trained without its sound, so never read as text."""
    if isinstance(record, dict):
        for key in ("audios", "audio"):
            if record.get(key) not in (None, "", []):
                _refuse_media(f"'{key}'")
    if any(AUDIO_TAG in t.text for t in turns):
        _refuse_media(f"a {AUDIO_TAG} tag")


def _refuse_media(where: str):
    raise RowError(AUDIO, f"row has audio ({where}): no Qwen-VL model hears audio; remove the audio from the row "
                          "or the row from the dataset")


def _video_list(record, key: str = "videos") -> list[tuple]:
    """The record's videos (``videos``, or the singular ``video`` of Qwen's qwen-vl-finetune and LLaVA):
    (reference or frame list, options) each. An entry is a path, a list of image references (the
    frames), or an object carrying either under ``video``/``path``/``url`` with qwen-vl-utils' keys."""
    if not isinstance(record, dict):
        return []
    videos = record.get(key)
    if videos is None and key == "videos" and record.get("video") not in (None, "", []):
        key, videos = "video", record["video"]
        if isinstance(videos, list) and videos and all(isinstance(v, str) for v in videos) \
                and not any(v.lower().endswith(VIDEO_SUFFIXES) for v in videos):
            videos = [videos]  # one frame list, as LLaVA-style rows give a video's frames
    if videos in (None, "", []):
        return []
    if isinstance(videos, (str, dict)):
        videos = [videos]
    if not isinstance(videos, list):
        raise RowError(MISSING_FIELD, f"'{key}' must be a list of videos (file paths, or lists of frame images)")
    return [_video_entry(entry, f"'{key}' entry {i}") for i, entry in enumerate(videos, start=1)]


def _video_entry(entry, where: str) -> tuple:
    options = {}
    if isinstance(entry, dict):
        options = _video_options(entry, where)
        entry = next((entry[k] for k in _VIDEO_KEYS if entry.get(k) not in (None, "", [])), None)
        if isinstance(entry, dict):  # OpenAI-like {"video_url": {"url": ...}}
            entry = entry.get("url")
    if isinstance(entry, list):
        frames = []
        for j, frame in enumerate(entry, start=1):
            try:
                ref = part_reference(frame)
            except BadImage as exc:
                raise RowError(exc.kind, f"{where} frame {j}: {exc}") from None
            if not isinstance(ref, str) or not ref:
                raise RowError(MISSING_FIELD, f"{where} frame {j} is not an image reference: give a path, URL or "
                                              "data URI")
            frames.append(ref)
        if not frames:
            raise RowError(MISSING_FIELD, f"{where} is an empty frame list: list the video's frames as images")
        return frames, options
    if not isinstance(entry, str) or not entry:
        raise RowError(MISSING_FIELD, f"{where} is not a video: give a file path (mp4, webm, ...), a list of frame "
                                      "images, or {'video': path, 'fps': ...}")
    return entry, options


def _video_options(part: dict, where: str) -> dict:
    """qwen-vl-utils' keys of one video (fps, nframes, min/max_frames, min/max/total_pixels, ...)."""
    found = {}
    for key, value in part.items():
        name = _OPTION_ALIASES.get(key, key)
        if name not in VIDEO_OPTIONS:
            continue
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if name in _FLOAT_OPTIONS:
            ok = number and (value > 0 or (name == "video_start" and value == 0))
        else:
            ok = number and value == int(value) and value > 0
            value = int(value) if ok else value
        if not ok:
            raise RowError(WRONG_TYPE, f"{where}: '{key}' is {clip(repr(value), 40)}; give a number above 0")
        found[name] = value
    if "fps" in found and "nframes" in found:
        raise RowError(WRONG_TYPE, f"{where}: give fps or nframes, not both (qwen-vl-utils reads one)")
    if ("resized_height" in found) != ("resized_width" in found):
        raise RowError(MISSING_FIELD, f"{where}: give resized_height and resized_width together")
    if found.get("min_pixels", 0) > found.get("max_pixels", float("inf")):
        raise RowError(WRONG_TYPE, f"{where}: min_pixels is above max_pixels")
    if found.get("nframes", 2) < 2:
        raise RowError(WRONG_TYPE, f"{where}: nframes is below 2, the frames the model reads at a time")
    return found


def _place_tags(turns: list[Turn], tag: str, count: int, what: str) -> None:
    """ms-swift's rule: media without tags go in front of the first user message; then tags and media must match."""
    tags = sum(t.text.count(tag) for t in turns)
    if tags == 0 and count:
        first = next((i for i, t in enumerate(turns) if t.role == "user"), None)
        if first is not None:
            turns[first] = replace(turns[first], text=tag * count + turns[first].text)
            tags = count
    if tags != count:
        raise RowError(IMAGE_COUNT, f"{tags} {tag} tag(s) but {count} {what}(s): each {what} needs one {tag} tag in "
                                    "the text, in order")
    for j, turn in enumerate(turns, start=1):
        if tag in turn.text and turn.role != "user":
            raise RowError(IMAGE_COUNT, f"turn {j} ({turn.role}) holds {'an' if what == 'image' else 'a'} {what}; the "
                                        f"chat template shows {what}s only in user turns: move it into a user message")


def _finish(turns: list[Turn], images: list[str], row: int, base: Path, record=None,
            options: list[dict] | None = None, videos: list[tuple] | None = None) -> Sample:
    _refuse_audio(record, turns)
    videos = videos or []
    if not any(t.role == "assistant" for t in turns):
        raise RowError(NO_ASSISTANT, "no assistant turn to learn from: add the answer as an assistant message")
    if not any(t.trained for t in turns):
        raise RowError(NO_ASSISTANT, "every assistant turn is marked 'loss': false, so nothing would be learned: "
                                     "drop the row or train one of its answers")
    _place_tags(turns, VIDEO_TAG, len(videos), "video")
    _place_tags(turns, IMAGE_TAG, len(images), "image")
    folder = str(base)
    try:
        resolved = [normalise(p, folder) for p in images]
        moving = [[normalise(f, folder) for f in ref] if isinstance(ref, list) else normalise(ref, folder)
                  for ref, _ in videos]
    except BadImage as exc:
        raise RowError(exc.kind, str(exc)) from None
    refs, boxes = [], []
    objects = record.get("objects") if isinstance(record, dict) else None
    if objects not in (None, {}, []):
        try:
            refs, boxes = read_objects(objects, turns, len(images))
        except GroundingError as exc:
            raise RowError(GROUNDING, str(exc)) from None
    return Sample(turns=turns, images=resolved, row=row, image_options=options or [{} for _ in images],
                  boxes=boxes, refs=refs, videos=moving, video_options=[dict(o) for _, o in videos])


def _turn(j: int, role, content, loss=None) -> Turn:
    if role not in ROLES:
        raise RowError(UNKNOWN_ROLE, f"message {j} has unknown role {role!r} (use system, user or assistant)")
    if loss is not None and not isinstance(loss, bool):
        raise RowError(WRONG_TYPE, f"message {j} ({role}) has 'loss': {clip(repr(loss), 40)}: use true or false")
    if loss and role != "assistant":
        raise RowError(WRONG_TYPE, f"message {j} ({role}) has 'loss': true, but only assistant turns are trained: "
                                   "remove the flag or make it an assistant turn")
    if not isinstance(content, str):
        raise RowError(EMPTY_CONTENT if content is None else WRONG_TYPE,
                       f"message {j} ({role}) has {'no' if content is None else 'non-text'} content")
    if not MEDIA_TAG.sub("", content).strip() and not (role == "user" and MEDIA_TAG.search(content)):
        raise RowError(EMPTY_CONTENT, f"message {j} ({role}) has empty content")
    return Turn(role, content, loss)


def _message_list(record, key: str):
    if not isinstance(record, dict):
        raise RowError(WRONG_TYPE, f"record is a {type(record).__name__}, expected an object with '{key}'")
    messages = record.get(key)
    if not isinstance(messages, list) or not messages:
        raise RowError(MISSING_FIELD, f"'{key}' is missing or not a non-empty list")
    return messages


def sample_from_swift(record, row: int, base: Path) -> Sample:
    """ms-swift (and sharegpt written with role/content ``messages``)."""
    turns = []
    for j, message in enumerate(_message_list(record, "messages"), start=1):
        if not isinstance(message, dict):
            raise RowError(WRONG_TYPE, f"message {j} is not an object")
        turns.append(_turn(j, message.get("role"), message.get("content"), message.get("loss")))
    return _finish(turns, _image_list(record), row, base, record, videos=_video_list(record))


def sample_from_sharegpt(record, row: int, base: Path, mapping: dict | None = None) -> Sample:
    """LLaMA-Factory sharegpt with its column and tag mappings (defaults: from/value, human/gpt)."""
    mapping = mapping or {}
    columns = {**SHAREGPT_COLUMNS, **(mapping.get("columns") or {})}
    tags = {**SHAREGPT_TAGS, **(mapping.get("tags") or {})}
    key = columns["messages"]
    if isinstance(record, dict) and key not in record and "messages" in record and not mapping:
        key, tags = "messages", {**tags, "role_tag": "role", "content_tag": "content", "user_tag": "user",
                                 "assistant_tag": "assistant"}
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["system_tag"]: "system"}
    turns = []
    system_column = columns.get("system")
    if system_column and isinstance(record, dict) and record.get(system_column):
        turns.append(_turn(0, "system", record[system_column]))
    for j, message in enumerate(_message_list(record, key), start=1):
        if not isinstance(message, dict):
            raise RowError(WRONG_TYPE, f"message {j} is not an object")
        tag = message.get(tags["role_tag"])
        if tag not in roles:
            raise RowError(UNKNOWN_ROLE, f"message {j} has unknown {tags['role_tag']!r} value {tag!r} "
                                         f"(use {', '.join(repr(r) for r in roles)})")
        turns.append(_turn(j, roles[tag], message.get(tags["content_tag"]), message.get("loss")))
    return _finish(turns, _image_list(record, columns.get("images") or "images"), row, base, record,
                   videos=_video_list(record, columns.get("videos") or "videos"))


def sample_from_messages(record, row: int, base: Path) -> Sample:
    """Chat messages whose content is a list of parts (or a plain string): HF/Qwen, OpenAI, Anthropic."""
    spare = iter(_image_list(record) if isinstance(record, dict) else [])
    spare_videos = iter(_video_list(record))
    turns, images, options, videos = [], [], [], []
    for j, message in enumerate(_message_list(record, "messages"), start=1):
        if not isinstance(message, dict):
            raise RowError(WRONG_TYPE, f"message {j} is not an object")
        content = message.get("content")
        if isinstance(content, list):
            pieces = []
            for k, part in enumerate(content, start=1):
                kind = part.get("type") if isinstance(part, dict) else None
                text = part.get("text", part.get("value")) if kind in ("text", "input_text") else None
                if isinstance(text, str):
                    tag = MEDIA_TAG.search(text)
                    if tag:
                        raise RowError(IMAGE_COUNT, f"message {j} part {k}: its text contains {tag.group(0)}, which "
                                                    "marks an image or video here; give them as image or video parts "
                                                    "and reword the text")
                    pieces.append(text)
                elif kind in AUDIO_PART_TYPES or (kind is None and isinstance(part, dict) and "audio" in part):
                    _refuse_media(f"message {j} part {k}")
                elif kind in VIDEO_PART_TYPES or (kind is None and isinstance(part, dict) and "video" in part):
                    where = f"message {j} part {k}"
                    has_ref = any(part.get(key) not in (None, "", []) for key in _VIDEO_KEYS)
                    video = _video_entry(part, where) if has_ref else next(spare_videos, None)
                    if video is None:
                        raise RowError(IMAGE_COUNT, f"{where} is a video without a reference (give 'video': a file "
                                                    "path or a list of frame images, or list it in 'videos')")
                    if not has_ref:
                        video = (video[0], {**video[1], **_video_options(part, where)})
                    videos.append(video)
                    pieces.append(VIDEO_TAG)
                elif is_image_part(part):
                    try:
                        ref = part_reference(part) or next(spare, None)
                    except BadImage as exc:
                        raise RowError(exc.kind, f"message {j} part {k}: {exc}") from None
                    if not isinstance(ref, str) or not ref:
                        raise RowError(IMAGE_COUNT, f"message {j} part {k} is an image without a reference "
                                                    "(give 'image': path, URL or data URI, or list it in 'images')")
                    images.append(ref)
                    options.append(_image_options(part, j, k))
                    pieces.append(IMAGE_TAG)
                else:
                    raise RowError(WRONG_TYPE, f"message {j} part {k} is not a text or image part "
                                               "({'type': 'text', 'text': ...}, {'type': 'image', 'image': ...} or "
                                               "{'type': 'image_url', 'image_url': {'url': ...}})")
            content = "".join(pieces)
        elif isinstance(content, str):  # tags in plain text take images from 'images' (videos from 'videos'), in order
            for _ in range(content.count(IMAGE_TAG)):
                ref = next(spare, None)
                if ref is None:
                    raise RowError(IMAGE_COUNT, f"message {j} has more <image> tags than 'images' has images")
                images.append(ref)
                options.append({})
            for _ in range(content.count(VIDEO_TAG)):
                video = next(spare_videos, None)
                if video is None:
                    raise RowError(IMAGE_COUNT, f"message {j} has more <video> tags than 'videos' has videos")
                videos.append(video)
        turns.append(_turn(j, message.get("role"), content, message.get("loss")))
    leftover = sum(1 for _ in spare)
    if leftover:
        raise RowError(IMAGE_COUNT, f"{leftover} image(s) in 'images' have no image part in the messages")
    leftover = sum(1 for _ in spare_videos)
    if leftover:
        raise RowError(IMAGE_COUNT, f"{leftover} video(s) in 'videos' have no video part in the messages")
    return _finish(turns, images, row, base, record, options, videos)


def _image_options(part, j: int, k: int) -> dict:
    """qwen-vl-utils' sizing keys of an image part (``resized_*`` only as a pair, as it reads them)."""
    if not isinstance(part, dict):
        return {}
    found = {key: part[key] for key in IMAGE_OPTIONS if key in part}
    for key, value in found.items():
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise RowError(WRONG_TYPE, f"message {j} part {k}: '{key}' is {clip(repr(value), 40)}; give a whole number "
                                       "of pixels above 0")
    if ("resized_height" in found) != ("resized_width" in found):
        raise RowError(MISSING_FIELD, f"message {j} part {k}: give resized_height and resized_width together "
                                      "(qwen-vl-utils reads them as a pair)")
    if found.get("min_pixels", 0) > found.get("max_pixels", float("inf")):
        raise RowError(WRONG_TYPE, f"message {j} part {k}: min_pixels is above max_pixels")
    return found


def loose_text(record) -> tuple[str, str]:
    """First user and assistant text of a record that did not parse, read as far as it goes (for display)."""
    if isinstance(record, list):
        record = {"messages": record}
    if not isinstance(record, dict):
        return "", ""
    messages = next((record[k] for k in ("messages", "conversations") if isinstance(record.get(k), list)), [])
    found = {}
    for message in messages:
        if not isinstance(message, dict):
            continue
        role = {"human": "user", "gpt": "assistant"}.get(message.get("from"), message.get("role"))
        content = message.get("content", message.get("value"))
        if isinstance(content, list):
            content = " ".join(p["text"] for p in content if isinstance(p, dict) and isinstance(p.get("text"), str))
        if isinstance(content, str) and role in ("user", "assistant"):
            found.setdefault(role, content)
    return found.get("user", ""), found.get("assistant", "")
