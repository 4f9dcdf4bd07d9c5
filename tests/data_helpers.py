"""Small dataset files for the data-layer tests (images are real PNGs written with PIL)."""

import json
import struct
import zlib
from pathlib import Path


def png(path: Path, width: int = 56, height: int = 56, color=(200, 30, 30)) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (width, height), color).save(path)
    return path


def png_claiming(path: Path, width: int, height: int) -> Path:
    """A 1x1 PNG whose header claims width x height (a decompression bomb, header-wise)."""
    png(path, 1, 1)
    data = bytearray(path.read_bytes())
    ihdr = 8 + 8  # signature, then length + "IHDR"
    data[ihdr:ihdr + 8] = struct.pack(">II", width, height)
    crc = zlib.crc32(bytes(data[ihdr - 4:ihdr + 13]))
    data[ihdr + 13:ihdr + 17] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def write_jsonl(path: Path, records) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in records), encoding="utf-8")
    return path


def swift(question="<image>What color?", answer="red", images=("img/a.png",), system=None):
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"messages": messages, "images": list(images)}


def data_uri(path: Path, media: str | None = "image/png") -> str:
    """``path``'s bytes as a base64 data URI (``media`` None: ``data:;base64,...``)."""
    import base64

    return f"data:{media or ''};base64,{base64.b64encode(Path(path).read_bytes()).decode()}"


class ImageServer:
    """A local http server on 127.0.0.1 serving a folder's files, counting requests per path.

    Besides the files: /page.html answers an HTML page, /notes.txt plain text, anything
    missing 404. Used as a context manager; nothing leaves the loopback interface."""

    def __init__(self, folder: Path):
        import collections

        self.folder, self.hits = Path(folder), collections.Counter()

    def __enter__(self):
        import threading
        from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                server.hits[self.path] += 1
                if self.path.startswith(("/to/", "/ftp/")):
                    name = self.path.split("/", 2)[2]
                    self.send_response(302)
                    self.send_header("Location", f"/{name}" if self.path.startswith("/to/") else f"ftp://127.0.0.1/{name}")
                    self.end_headers()
                    return
                special = {"/page.html": ("text/html", b"<!DOCTYPE html><html><body>Sign in</body></html>"),
                           "/notes.txt": ("text/plain", b"just some notes")}
                target = server.folder / self.path.lstrip("/")
                if self.path in special:
                    kind, body = special[self.path]
                elif target.is_file():
                    kind, body = "image/png", target.read_bytes()
                else:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released): connecting to it is refused."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def video(path: Path, frames: int = 24, width: int = 64, height: int = 48, fps: int = 8,
          codec: str = "mpeg4") -> Path:
    """A small real video written with PyAV: a white bar moving right, one column per frame."""
    import av
    import numpy as np

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            picture = np.zeros((height, width, 3), np.uint8)
            picture[:, (4 * i) % width] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(picture, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
