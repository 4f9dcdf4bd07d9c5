"""Video reading: header reads for ``data check``, and frames sampled per second for training.

    python benchmarks/video_read.py [--frames 300] [--width 640] [--height 480] [--repeat 3]

Writes one clip per codec (MPEG-4 in mp4, VP9 in WebM) with PyAV into a temporary folder,
then times: ``read_video_info`` (the check's header read), ``read_video_pyav`` (decoding, the
file's frames per second), and ``sample_video`` (qwen-vl-utils' fetch_video over PyAV: decode,
pick, bicubic resize) at its default size and at video_max_pixels 50176. The first read of a
process pays the imports (torch, and torchvision through qwen-vl-utils) and is reported apart.
The clips are synthetic (a bar on black): real footage decodes slower. Prints one JSON line.
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def measure(frames: int = 300, width: int = 640, height: int = 480, repeat: int = 3) -> dict:
    """The figures this script prints (benchmarks/video.py reuses them)."""
    from data_helpers import video
    from workbench.data.videos import read_video_info, read_video_pyav, sample_video

    out = {"frames": frames, "size": f"{width}x{height}"}
    with tempfile.TemporaryDirectory() as tmp:
        clips = {"mp4": video(Path(tmp) / "a.mp4", frames, width, height, 30),
                 "webm": video(Path(tmp) / "a.webm", frames, width, height, 30, "libvpx-vp9")}
        start = time.perf_counter()
        read_video_pyav({"video": str(clips["mp4"])})
        out["first_read_s"] = round(time.perf_counter() - start, 3)
        for name, clip in clips.items():
            path = str(clip)
            header = _best(lambda: [read_video_info(path) for _ in range(20)], repeat) / 20
            decode = _best(lambda: read_video_pyav({"video": path}), repeat)
            default = _best(lambda: sample_video(path, {}, {}), repeat)
            small = _best(lambda: sample_video(path, {}, {"max_pixels": 50176}), repeat)
            sampled = sample_video(path, {}, {})
            out[name] = {"header_ms": round(header * 1000, 2), "decode_s": round(decode, 3),
                         "decoded_frames_per_s": round(frames / decode, 1),
                         "sampled_frames": sampled.count, "sampled_size": list(sampled.frames.shape[2:]),
                         "sample_default_s": round(default, 3), "sample_50176_s": round(small, 3),
                         "sampled_frames_per_s": round(sampled.count / default, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=480)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    print(json.dumps(measure(args.frames, args.width, args.height, args.repeat)))


if __name__ == "__main__":
    main()
