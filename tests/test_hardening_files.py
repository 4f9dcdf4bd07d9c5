"""Issue 27, items 3 and 10: no file a user names (a device, a FIFO, a huge or growing file, a zip
bomb) can take the process's memory or disk."""

from __future__ import annotations

import os
import threading
import zipfile

import pytest

from tests.data_helpers import png, swift, write_jsonl
from workbench.errors import UserError


def _finishes_within(fn, seconds: float):
    """(finished, result or exception) of ``fn`` run in a daemon thread for at most ``seconds``."""
    box = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            box["value"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(seconds)
    return not thread.is_alive(), box.get("value")


def test_a_fifo_as_dataset_is_refused_at_once(tmp_path):
    from workbench.data.formats import load_samples

    fifo = tmp_path / "data.jsonl"
    os.mkfifo(fifo)
    try:
        finished, outcome = _finishes_within(lambda: load_samples(fifo), 5)
    finally:  # a reader blocked in open() (the old code) gets a writer and EOF, so the thread ends
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert finished, "loading a FIFO blocked"
    assert isinstance(outcome, UserError) and "pipe (FIFO)" in str(outcome) and "regular file" in str(outcome)


def test_dev_zero_as_dataset_is_refused_without_reading_it():
    """In a child process capped at 2 GiB of address space: the old loader read /dev/zero until killed."""
    import resource
    import subprocess
    import sys

    def cap():
        resource.setrlimit(resource.RLIMIT_AS, (2 * 2**30, 2 * 2**30))

    code = ("from workbench.data.formats import load_samples\n"
            "try:\n    load_samples('/dev/zero')\nexcept Exception as exc:\n    print(type(exc).__name__, exc)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, preexec_fn=cap,
                          env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert done.stdout.startswith("UserError") and "character device" in done.stdout, done.stdout + done.stderr[-500:]


def test_a_dataset_over_the_limit_is_refused_naming_the_limit(tmp_path, monkeypatch):
    from workbench.data.formats import load_samples

    png(tmp_path / "img" / "a.png")
    data = write_jsonl(tmp_path / "train.jsonl", [swift()] * 100)
    assert len(load_samples(data).samples) == 100
    monkeypatch.setenv("WORKBENCH_MAX_DATASET_GB", str(data.stat().st_size / 2 / 1e9))
    with pytest.raises(UserError, match=r"more than the .* read at once .*WORKBENCH_MAX_DATASET_GB"):
        load_samples(data)
    monkeypatch.setenv("WORKBENCH_MAX_DATASET_GB", "lots")
    with pytest.raises(UserError, match="not a number of gigabytes"):
        load_samples(data)


def test_a_file_larger_than_its_stat_size_is_cut_off_while_reading():
    from workbench.data.reading import read_bounded

    status = "/proc/self/status"  # a regular file whose stat size (0) is less than what it reads
    assert os.stat(status).st_size == 0 and len(open(status, "rb").read()) > 100
    with pytest.raises(UserError, match="grew past"):
        read_bounded(status, limit=100)


def test_a_fifo_named_as_an_image_is_a_problem_not_a_hang(tmp_path):
    from workbench.data.images import read_image_info

    fifo = tmp_path / "a.png"
    os.mkfifo(fifo)
    try:
        finished, info = _finishes_within(lambda: read_image_info(str(fifo)), 5)
    finally:
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
    assert finished and info.error and "pipe" in info.error, info


def test_a_huge_config_file_is_refused_without_reading_all_of_it(tmp_path):
    import tracemalloc

    from workbench.settings import RunConfig

    big = tmp_path / "run.yaml"
    with open(big, "wb") as handle:
        handle.truncate(200 * 2**20)  # sparse: 200 MiB of zeros on no disk
    tracemalloc.start()
    try:
        with pytest.raises(UserError, match="Config file"):
            RunConfig.load(big)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB held to refuse a config file"


def _zip(path, entries: dict, level: int = 9):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=level) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


@pytest.fixture()
def home_is(tmp_path, monkeypatch):
    monkeypatch.setenv("WORKBENCH_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def _unpacked(home):
    folder = home / "datasets"
    return [p for p in folder.rglob("*") if p.is_file()] if folder.exists() else []


def test_a_zip_bomb_entry_is_refused_before_anything_is_written(tmp_path, home_is):
    from workbench.data.archive import unpack_dataset

    line = b'{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "ok"}]}\n'
    bomb = _zip(tmp_path / "bomb.zip", {"train.jsonl": line, "img/zeros.png": b"\0" * (64 * 2**20)})
    assert bomb.stat().st_size < 200_000  # 64 MiB from under 200 kB: about 1000:1
    with pytest.raises(UserError, match=r"img/zeros\.png.*more than 200:1.*zip bomb"):
        unpack_dataset(bomb)
    assert _unpacked(home_is) == []
    fine = _zip(tmp_path / "fine.zip", {"train.jsonl": line * 1000, "img/small.bin": b"\0" * 2**19})
    assert unpack_dataset(fine).name == "train.jsonl"  # repetitive text and small entries still unpack


def test_too_many_entries_or_too_many_bytes_are_refused(tmp_path, home_is, monkeypatch):
    from workbench.data import archive

    entries = {f"img/{i}.txt": os.urandom(100) for i in range(20)}
    entries["train.jsonl"] = b"{}\n"
    many = _zip(tmp_path / "many.zip", entries)
    monkeypatch.setattr(archive, "MAX_MEMBERS", 10)
    with pytest.raises(UserError, match=r"holds 21 entries, more than 10"):
        archive.unpack_dataset(many)
    monkeypatch.setattr(archive, "MAX_MEMBERS", 1000)
    monkeypatch.setattr(archive, "MAX_UNPACKED_BYTES", 1000)
    with pytest.raises(UserError, match=r"unpacks to .* GiB, more than"):
        archive.unpack_dataset(many)
    assert _unpacked(home_is) == []


def test_an_entry_that_lies_about_its_size_writes_no_more_than_it_declares(tmp_path, home_is):
    import struct

    from workbench.data.archive import unpack_dataset

    real = 4 * 2**20
    path = _zip(tmp_path / "liar.zip", {"train.jsonl": b"{}\n", "img/a.bin": os.urandom(real)}, level=0)
    raw = bytearray(path.read_bytes())
    central = raw.rfind(b"PK\x01\x02")  # the central directory entry of img/a.bin (written last)
    assert raw[central + 46:central + 46 + 9] == b"img/a.bin"
    raw[central + 24:central + 28] = struct.pack("<I", 1000)  # declares 1000 bytes, holds 4 MiB
    path.write_bytes(bytes(raw))
    with pytest.raises(UserError):
        unpack_dataset(path)
    assert _unpacked(home_is) == []
