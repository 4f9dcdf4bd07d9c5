"""Videos: PyAV reads the file, qwen-vl-utils samples and sizes the frames.

A row's video is a local file (mp4, avi, webm, mov, mkv; a path or a ``file://`` URI) or a
frame list (a list of image references, read like any image: ``workbench.data.images``).
``sample_video`` returns the frames the model sees, exactly as qwen-vl-utils' ``fetch_video``
gives them: its ``smart_nframes`` picks how many (``fps``/``nframes``, ``min_frames``,
``max_frames``), its ``smart_resize`` how large (``min_pixels``/``max_pixels`` per frame,
``total_pixels`` over the video, or ``resized_height``/``resized_width``).

Why PyAV: qwen-vl-utils 0.0.14 reads files with torchcodec, decord or
``torchvision.io.read_video``; the last is gone from torchvision 0.29, decord has no wheels
for recent Pythons or ARM, and torchcodec needs FFmpeg libraries of a matching major version
installed on the system. PyAV (``av``) ships its own FFmpeg in its wheels for Linux, macOS and
Windows, CPU or CUDA machine alike, and is already a dependency of qwen-vl-utils. It is
registered as a qwen-vl-utils reader backend (``VIDEO_READER_BACKENDS["pyav"]``), so frame
indices, counts and sizes stay qwen-vl-utils' own code; only the decoding is ours.

``workbench.data.video_counts.video_plan`` gives the same (frames, height, width) from the
container's header without decoding, for ``data check``; tests pin it against ``fetch_video``.
"""

from __future__ import annotations

import logging
import math
import os
import stat
import threading
from dataclasses import dataclass, field

from workbench.data.images import MAX_IMAGE_PIXELS, load_image
from workbench.data.problems import VIDEO_MISSING, VIDEO_TOO_LARGE, VIDEO_TOO_SHORT, VIDEO_UNREADABLE, BadImage
from workbench.data.refs import DATA, FILE, URL, kind_of, short

log = logging.getLogger(__name__)

VIDEO_EXTENSIONS = (".mp4", ".avi", ".webm", ".mov", ".mkv", ".m4v", ".mpeg", ".mpg", ".flv", ".wmv", ".3gp", ".ts")
# qwen-vl-utils' per-video keys (its ``fetch_video`` / ``smart_nframes``): a row may set them per video.
VIDEO_OPTIONS = ("fps", "nframes", "min_frames", "max_frames", "min_pixels", "max_pixels", "total_pixels",
                 "resized_height", "resized_width", "video_start", "video_end", "sample_fps")
# Decoding walks every frame up to the last one sampled: a file of more frames costs minutes per epoch.
MAX_VIDEO_FRAMES = 100_000
MAX_VIDEO_BYTES = 8 << 30
# The sampled frames are held decoded (RGB) before qwen-vl-utils resizes them, then as float32.
MAX_DECODED_BYTES = 4 << 30
BACKEND = "pyav"


class BadVideo(BadImage):
    """A video that cannot be read, with its problem kind and one sentence naming the file."""


@dataclass(frozen=True)
class VideoInfo:
    frames: int = 0  # frames in the file (the stream's count; else its packets)
    fps: float = 0.0
    width: int = 0
    height: int = 0
    error: str = ""
    kind: str = ""


@dataclass
class SampledVideo:
    """The frames the model sees: ``frames`` is (T, C, H, W) float as ``fetch_video`` returns it."""

    frames: object  # torch.Tensor
    fps: float  # the file's frame rate (the frame list's sample_fps)
    indices: list[int] = field(default_factory=list)  # which frames of the file, in order
    total_frames: int = 0

    @property
    def count(self) -> int:
        return int(self.frames.shape[0])

    @property
    def timestamps(self) -> list[float]:
        """Seconds into the video of each sampled frame."""
        return [i / self.fps for i in self.indices] if self.fps else [0.0] * self.count

    def metadata(self) -> dict:
        """What transformers' video processors take as ``video_metadata`` (Qwen3-VL's timestamps)."""
        return {"fps": self.fps, "frames_indices": list(self.indices), "total_num_frames": self.total_frames,
                "video_backend": BACKEND}


def is_frame_list(ref) -> bool:
    return isinstance(ref, (list, tuple))


def describe(ref) -> str:
    """A video reference as a message quotes it."""
    if is_frame_list(ref):
        return f"frame list of {len(ref)} image(s) starting {short(ref[0])}" if ref else "empty frame list"
    return short(ref)


# ---------------------------------------------------------------------------- the file
def _check_file(path: str) -> None:
    kind = kind_of(path)
    if kind in (URL, DATA):
        raise BadVideo(VIDEO_UNREADABLE, f"video {short(path)} is not a local file: the workbench reads videos from "
                                         "files on this machine; download it and give its path (or give its frames as "
                                         "a list of images)")
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise BadVideo(VIDEO_MISSING, f"video file {short(path)} is missing: fix the path") from None
    except OSError as exc:
        raise BadVideo(VIDEO_UNREADABLE, f"video file {short(path)} cannot be read ({exc.strerror}): check its "
                                         "permissions") from None
    if stat.S_ISDIR(st.st_mode):
        raise BadVideo(VIDEO_UNREADABLE, f"video {short(path)} is a folder, not a video file: name the file (or list "
                                         "its frames as images)")
    if not stat.S_ISREG(st.st_mode):  # a FIFO would block the demuxer forever
        raise BadVideo(VIDEO_UNREADABLE, f"video {short(path)} is a device or a pipe, not a video file: name the "
                                         "file itself")
    if st.st_size > MAX_VIDEO_BYTES:
        raise BadVideo(VIDEO_TOO_LARGE, f"video {short(path)} is {st.st_size / 2**30:.1f} GiB, over the "
                                        f"{MAX_VIDEO_BYTES >> 30} GiB the workbench reads: cut it into clips")


def _open(path: str):
    import av

    _check_file(path)
    try:
        container = av.open(path, mode="r")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as exc:
        raise BadVideo(VIDEO_UNREADABLE, f"video {short(path)} is not a readable video ({_reason(exc)}): replace "
                                         "the file or fix the path") from None
    if not container.streams.video:
        container.close()
        raise BadVideo(VIDEO_UNREADABLE, f"video {short(path)} has no video stream (audio only?): give a file with "
                                         "pictures")
    return container


def _reason(exc: Exception) -> str:
    text = str(exc).split(": '")[0].strip()  # FFmpeg's messages end in the path, which the sentence names already
    return text[:120] or type(exc).__name__


def _frame_count(container, stream) -> int:
    if stream.frames > 0:
        return int(stream.frames)
    count = 0  # containers without a count in the header (webm, some mkv): count packets, without decoding
    for packet in container.demux(stream):
        if packet.size:
            count += 1
            if count > MAX_VIDEO_FRAMES:
                break
    container.seek(0)
    return count


def _info(container, path: str) -> VideoInfo:
    stream = container.streams.video[0]
    fps = float(stream.average_rate or stream.guessed_rate or 0)
    width, height = stream.codec_context.width, stream.codec_context.height
    frames = _frame_count(container, stream)
    if frames <= 0:
        return VideoInfo(error=f"video {short(path)} has no frames: replace the file", kind=VIDEO_TOO_SHORT)
    if frames > MAX_VIDEO_FRAMES:
        return VideoInfo(frames, fps, width, height, f"video {short(path)} has over {MAX_VIDEO_FRAMES} frames, more "
                                                     "than the workbench decodes per row: cut it into clips",
                         VIDEO_TOO_LARGE)
    if width <= 0 or height <= 0:
        return VideoInfo(error=f"video {short(path)} has no picture size in its header: re-encode it",
                         kind=VIDEO_UNREADABLE)
    if width * height > MAX_IMAGE_PIXELS:
        return VideoInfo(frames, fps, width, height, f"video {short(path)} is {width}x{height}, too large to decode "
                                                     f"safely (over {MAX_IMAGE_PIXELS} pixels a frame): downscale it",
                         VIDEO_TOO_LARGE)
    if fps <= 0:
        return VideoInfo(frames, fps, width, height, f"video {short(path)} has no frame rate in its header: "
                                                     "re-encode it (or give nframes for the row)", VIDEO_UNREADABLE)
    return VideoInfo(frames, fps, width, height)


def read_video_info(path: str) -> VideoInfo:
    """Frames, frame rate and size from the container's header; never decodes a picture and never raises."""
    try:
        container = _open(path)
    except BadVideo as exc:
        return VideoInfo(error=str(exc), kind=exc.kind)
    try:
        with container:
            return _info(container, path)
    except Exception as exc:  # noqa: BLE001  (any demuxer failure is this file's problem, said as one)
        return VideoInfo(error=f"video {short(path)} is not a readable video ({_reason(exc)}): replace the file",
                         kind=VIDEO_UNREADABLE)


def read_video_pyav(ele: dict):
    """qwen-vl-utils' reader contract: (video (T, C, H, W) uint8, metadata, sample_fps) for ``ele["video"]``."""
    import numpy as np
    import torch
    from qwen_vl_utils.vision_process import calculate_video_frame_range, smart_nframes

    path = ele["video"]
    if isinstance(path, str) and path.startswith("file://"):
        path = path[7:]
    container = _open(path)
    with container:
        info = _info(container, path)
        if info.error:
            raise BadVideo(info.kind, info.error)
        start, end, total = calculate_video_frame_range(ele, info.frames, info.fps)
        try:
            nframes = smart_nframes(ele, total_frames=total, video_fps=info.fps)
        except ValueError:
            raise BadVideo(VIDEO_TOO_SHORT, _too_short(path, total)) from None
        check_decoded_size(path, nframes, info.width, info.height)
        indices = torch.linspace(start, end, nframes).round().long().tolist()
        wanted: dict[int, int] = {}
        for i in indices:
            wanted[i] = wanted.get(i, 0) + 1
        frames, seen = [], 0
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        try:
            for frame in container.decode(stream):
                if seen in wanted:
                    picture = frame.to_ndarray(format="rgb24")
                    frames.extend([picture] * wanted[seen])
                seen += 1
                if seen > indices[-1]:
                    break
        except Exception as exc:  # noqa: BLE001
            if not frames:
                raise BadVideo(VIDEO_UNREADABLE, f"video {short(path)} could not be decoded ({_reason(exc)}): "
                                                 "replace the file") from None
            log.warning("video %s: decoding stopped at frame %d (%s)", path, seen, exc)
    if not frames:
        raise BadVideo(VIDEO_UNREADABLE, f"video {short(path)} decoded to no pictures: replace the file")
    if len(frames) < nframes:  # the header counted more frames than decode: repeat the last, keep the count
        log.warning("video %s: header says %d frames, %d decoded; repeating the last", path, info.frames, seen)
        frames.extend([frames[-1]] * (nframes - len(frames)))
    video = torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)
    metadata = {"fps": info.fps, "frames_indices": indices, "total_num_frames": total, "video_backend": BACKEND}
    return video, metadata, nframes / max(total, 1e-6) * info.fps


def check_decoded_size(path, nframes: int, width: int, height: int) -> None:
    """``BadVideo`` when the sampled frames would take more than MAX_DECODED_BYTES decoded."""
    size = nframes * width * height * 3
    if size > MAX_DECODED_BYTES:
        raise BadVideo(VIDEO_TOO_LARGE, f"video {short(path)} would take {size / 2**30:.1f} GiB decoded ({nframes} "
                                        f"frames of {width}x{height}), over the {MAX_DECODED_BYTES >> 30} GiB the "
                                        "workbench holds per video: lower data.video_fps or data.video_max_frames "
                                        "(or the row's fps/nframes), or downscale the file")


def _too_short(path, total: int) -> str:
    return (f"video {short(path)} has {total} frame(s), fewer than the 2 the model reads at a time (its temporal "
            "patch): give a longer video or its frames as images")


_registered = threading.Lock()


def register_backend() -> None:
    """Make qwen-vl-utils read video files with PyAV (once per process).

    Its own fallback after a reader error is torchvision's ``read_video``, which torchvision 0.29
    removed: where it is gone, PyAV takes that slot too, so a bad file raises our sentence."""
    from qwen_vl_utils import vision_process as vp
    from torchvision import io as tvio

    with _registered:
        vp.VIDEO_READER_BACKENDS[BACKEND] = read_video_pyav
        if not hasattr(tvio, "read_video"):
            vp.VIDEO_READER_BACKENDS["torchvision"] = read_video_pyav
        if getattr(vp.get_video_reader_backend, "__wrapped_by_workbench__", False):
            return

        def backend() -> str:
            return BACKEND

        backend.__wrapped_by_workbench__ = True
        vp.get_video_reader_backend = backend


# ---------------------------------------------------------------------------- sampling
def video_element(ref, options: dict, defaults: dict, factor: int = 28) -> dict:
    """qwen-vl-utils' element for one video: the run's defaults, then the row's own keys.

    ``fps`` and ``nframes`` exclude each other (``smart_nframes`` asserts it): a row's
    ``nframes`` drops the run's ``fps``, and so do min/max_frames. A run's max_pixels below
    qwen-vl-utils' default min_pixels (128 tokens) brings min_pixels down to a quarter of it, where
    qwen-vl-utils would refuse every video (a quarter: smart_resize rounds a frame under min_pixels
    up, which could pass max_pixels)."""
    from qwen_vl_utils.vision_process import VIDEO_MIN_TOKEN_NUM

    ele = {k: v for k, v in defaults.items() if v not in (None, 0, "")}
    if "min_pixels" not in ele and ele.get("max_pixels", math.inf) < VIDEO_MIN_TOKEN_NUM * factor * factor:
        ele["min_pixels"] = ele["max_pixels"] // 4
    if "nframes" in options:
        for key in ("fps", "min_frames", "max_frames"):
            ele.pop(key, None)
    if "resized_height" in options:
        ele.pop("min_pixels", None), ele.pop("max_pixels", None)
    ele.update(options)
    ele["video"] = ref
    return ele


def sample_video(ref, options: dict | None = None, defaults: dict | None = None, factor: int = 28,
                 downloads=None) -> SampledVideo:
    """The frames the model sees for a video file or frame list, through qwen-vl-utils' ``fetch_video``.

    ``defaults`` are the run's (``video_defaults``), ``options`` the row's keys for this video
    (``VIDEO_OPTIONS``), ``factor`` the family's pixels per token (28; Qwen3-VL 32).
    ``BadVideo`` with one sentence when the video cannot be read."""
    from qwen_vl_utils.vision_process import fetch_video

    ele = video_element(ref, options or {}, defaults or {}, factor)
    if is_frame_list(ref):
        ele["video"] = [load_image(r, downloads) for r in _frame_refs(ref)]
        _same_size(ref, ele["video"])
    else:
        register_backend()
    try:
        video, metadata = fetch_video(ele, image_patch_size=factor // 2, return_video_metadata=True)
    except BadImage:
        raise
    except (ValueError, AssertionError, RuntimeError) as exc:
        raise BadVideo(VIDEO_UNREADABLE, f"video {describe(ref)} could not be sampled ({_reason(exc)}): check the "
                                         "video settings and the row's options (fps, nframes, min/max_frames, "
                                         "min/max_pixels, total_pixels)") from None
    indices = [int(i) for i in metadata["frames_indices"]]
    return SampledVideo(video, float(metadata["fps"]), indices, int(round(metadata["total_num_frames"])))


def _frame_refs(ref) -> list:
    if len(ref) == 0:
        raise BadVideo(VIDEO_TOO_SHORT, "video is an empty frame list: list at least one image")
    return list(ref)


def _same_size(ref, images) -> None:
    sizes = {image.size for image in images}
    if len(sizes) > 1:
        raise BadVideo(VIDEO_UNREADABLE, f"video {describe(ref)} has frames of different sizes "
                                         f"({', '.join(f'{w}x{h}' for w, h in sorted(sizes)[:3])}): give frames of "
                                         "one size (qwen-vl-utils stacks them)")


SETTINGS = {"video_fps": "fps", "video_min_frames": "min_frames", "video_max_frames": "max_frames",
            "video_min_pixels": "min_pixels", "video_max_pixels": "max_pixels", "video_total_pixels": "total_pixels"}


def defaults_from(data) -> dict:
    """qwen-vl-utils' element keys from a run's ``DataSettings`` (or its dict form); a field at 0 or
    absent leaves qwen-vl-utils' own default."""
    get = data.get if isinstance(data, dict) else (lambda key: getattr(data, key, None))
    return {key: get(field) for field, key in SETTINGS.items() if get(field)}


def is_video_path(ref) -> bool:
    return isinstance(ref, str) and kind_of(ref) == FILE and ref.lower().endswith(VIDEO_EXTENSIONS)
