"""ms-swift grounding rows: ``objects`` boxes written into the text as the model family writes them.

A row says ``"objects": {"ref": ["cat"], "bbox": [[x1, y1, x2, y2]], "bbox_type": "real",
"image_id": [0]}`` and places ``<ref-object>`` and ``<bbox>`` in its text; each placeholder takes
the next ref or box, in order. ``bbox_type``: ``real`` (pixels of the original image, the
default), ``norm1`` (0-1) or ``norm1000`` (0-1000); ``image_id`` names the image a box is on
(0, the first, by default).

The text the model learns is its family's own grounding text:

- Qwen2-VL: ``<|object_ref_start|>cat<|object_ref_end|>`` and ``<|box_start|>(x1,y1),(x2,y2)<|box_end|>``,
  coordinates normalised to 0-1000 of the image;
- Qwen2.5-VL: the same tokens, coordinates in pixels of the image as the model sees it (after
  smart_resize at the run's min/max pixels);
- Qwen3-VL: the label as plain text and ``[x1, y1, x2, y2]`` normalised to 0-1000.

Boxes need the image's size, so the text is written when the check has read the image headers
(``workbench.data.validation``), and the Dataset tab draws the boxes on the image.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from workbench.data.problems import MISSING_FIELD, WRONG_TYPE
from workbench.data.sample import Sample, Turn

REF, BOX = "<ref-object>", "<bbox>"
UNITS = ("real", "norm1", "norm1000")
BOX_OUTSIDE = "box-outside-image"


@dataclass(frozen=True)
class Style:
    ref: str  # format for the label
    box: str  # format for x1, y1, x2, y2
    resized: bool  # coordinates in pixels of the resized image (else 0-1000 of the image)


QWEN2 = Style("<|object_ref_start|>{}<|object_ref_end|>", "<|box_start|>({},{}),({},{})<|box_end|>", False)
STYLES = {"qwen2_vl": QWEN2, "qwen2_5_vl": replace(QWEN2, resized=True), "qwen3_vl": Style("{}", "[{}, {}, {}, {}]", False)}


def grounding_style(model: str) -> Style:
    """The grounding text of ``model``'s family (Qwen2-VL's when the family is not known)."""
    from workbench.models import family_of_model

    family = family_of_model(model) if model else None
    return STYLES.get(family.model_type if family else "", QWEN2)


@dataclass(frozen=True)
class Box:
    image: int  # index into the row's images
    coords: tuple  # x1, y1, x2, y2 in ``unit``
    unit: str
    label: str = ""

    def pixels(self, width: int, height: int) -> tuple:
        """x1, y1, x2, y2 in pixels of the original image."""
        scale = {"real": (1, 1), "norm1": (width, height), "norm1000": (width / 1000, height / 1000)}[self.unit]
        x1, y1, x2, y2 = self.coords
        return x1 * scale[0], y1 * scale[1], x2 * scale[0], y2 * scale[1]


class GroundingError(ValueError):
    def __init__(self, kind: str, reason: str):
        super().__init__(reason)
        self.kind = kind


def _per_box(value, count: int, name: str, default):
    if value is None:
        return [default] * count
    if not isinstance(value, list):
        value = [value] * count
    if len(value) != count:
        raise GroundingError(MISSING_FIELD, f"objects.{name} has {len(value)} entries for {count} box(es)")
    return value


def read_objects(objects, turns: list[Turn], images: int) -> tuple[list[str], list[Box]]:
    """(refs, boxes) of a row's ``objects``, checked against its placeholders and images."""
    if not isinstance(objects, dict):
        raise GroundingError(WRONG_TYPE, "'objects' must be an object with 'ref' and 'bbox' lists")
    refs, bboxes = objects.get("ref") or [], objects.get("bbox") or []
    if isinstance(refs, str):
        refs = [refs]
    if not isinstance(refs, list) or not all(isinstance(r, str) for r in refs):
        raise GroundingError(WRONG_TYPE, "objects.ref must be a list of labels (text)")
    if not isinstance(bboxes, list) or (bboxes and not isinstance(bboxes[0], list)):
        raise GroundingError(WRONG_TYPE, "objects.bbox must be a list of [x1, y1, x2, y2] boxes")
    unit = objects.get("bbox_type") or "real"
    if unit not in UNITS:
        raise GroundingError(WRONG_TYPE, f"objects.bbox_type {str(unit)[:40]!r} is not one of {', '.join(UNITS)}")
    image_ids = _per_box(objects.get("image_id"), len(bboxes), "image_id", 0)
    text = "".join(t.text for t in turns)
    for placeholder, found in ((REF, refs), (BOX, bboxes)):
        if text.count(placeholder) != len(found):
            raise GroundingError(MISSING_FIELD, f"the text has {text.count(placeholder)} {placeholder} placeholder(s) "
                                                f"but objects gives {len(found)}: one each, in order")
    labels = _box_labels(text, refs, len(bboxes))
    boxes = []
    for i, (bbox, image) in enumerate(zip(bboxes, image_ids), start=1):
        if len(bbox) != 4 or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in bbox):
            raise GroundingError(WRONG_TYPE, f"objects.bbox entry {i} is not [x1, y1, x2, y2] numbers")
        if not isinstance(image, int) or not 0 <= image < images:
            raise GroundingError(MISSING_FIELD, f"objects.image_id entry {i} ({image}) names no image of the row "
                                                f"({images} image(s), counted from 0)")
        boxes.append(Box(image, tuple(float(v) for v in bbox), unit, labels[i - 1]))
    return refs, boxes


def _box_labels(text: str, refs: list[str], count: int) -> list[str]:
    """The label drawn on each box: the refs in order when there is one per box ("Find <ref-object> and
    <ref-object>" / "<bbox><bbox>"); else the ref placed last before the box ("<ref-object><bbox> and
    <ref-object><bbox>"), or the only ref of the row ("Find every <ref-object>" / "<bbox><bbox>")."""
    if len(refs) == count:
        return list(refs)
    words, labels, last = iter(refs), [], ""
    for placeholder in re.findall(f"{re.escape(REF)}|{re.escape(BOX)}", text):
        if placeholder == REF:
            last = next(words, "")
        else:
            labels.append(last or (refs[0] if len(set(refs)) == 1 else ""))
    return labels + [""] * (count - len(labels))


def ground(sample: Sample, refs: list[str], sizes: list[tuple[int, int]], style: Style, resized) -> Sample:
    """The sample with its placeholders written in ``style``; ``sizes`` (width, height) per image;
    ``resized(index, width, height)`` the (height, width) the model sees image ``index`` at."""
    words = iter(style.ref.format(r) for r in refs)
    coords = []
    for n, box in enumerate(sample.boxes, start=1):
        width, height = sizes[box.image]
        x1, y1, x2, y2 = box.pixels(width, height)
        if not (0 <= x1 < x2 <= width * 1.001 and 0 <= y1 < y2 <= height * 1.001):
            raise GroundingError(BOX_OUTSIDE, f"box {n} {list(box.coords)} ({box.unit}) is not inside image "
                                              f"{box.image} ({width}x{height}) with x1 < x2 and y1 < y2: fix the box "
                                              "or its bbox_type")
        if style.resized:
            rh, rw = resized(box.image, width, height)
            sx, sy = rw / width, rh / height
        else:
            sx, sy = 1000 / width, 1000 / height
        coords.append(style.box.format(*(round(v) for v in (x1 * sx, y1 * sy, x2 * sx, y2 * sy))))
    boxes = iter(coords)
    turns = []
    for turn in sample.turns:
        text = turn.text
        if REF in text or BOX in text:
            text = _fill(text, words, boxes)
        turns.append(replace(turn, text=text))
    return replace(sample, turns=turns, refs=[])


def _fill(text: str, words, boxes) -> str:
    out, i = [], 0
    while True:
        at = [(text.find(p, i), p) for p in (REF, BOX)]
        at = [(pos, p) for pos, p in at if pos >= 0]
        if not at:
            return "".join(out) + text[i:]
        pos, placeholder = min(at)
        out.append(text[i:pos])
        out.append(next(words) if placeholder == REF else next(boxes))
        i = pos + len(placeholder)


_NUMBER = r"\s*(-?\d+(?:\.\d+)?)\s*"
# every family's written box: "(x1,y1),(x2,y2)" (Qwen2/2.5-VL, box tokens dropped or not) and "[x1, y1, x2, y2]"
# (Qwen3-VL, and the JSON "bbox_2d" answers Qwen2.5-VL gives)
_WRITTEN_BOX = re.compile(rf"\({_NUMBER},{_NUMBER}\)\s*,\s*\({_NUMBER},{_NUMBER}\)|\[{_NUMBER},{_NUMBER},{_NUMBER},{_NUMBER}\]")


def boxes_in_text(text: str) -> list[tuple[float, float, float, float]]:
    """The boxes a text writes, in the order written, in whatever units it writes them (an answer and its
    reference use the same family's units, so they compare as they are)."""
    found = []
    for match in _WRITTEN_BOX.finditer(text or ""):
        found.append(tuple(float(v) for v in match.groups() if v is not None))
    return found
