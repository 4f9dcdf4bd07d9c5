"""One model resolution for data, planner, training, inference and export.

``locate_model(name)`` says what a name is without touching the network: the demo, a
preset (-> its hub id), a local folder, or a hub id, and where its files are on this machine
if they are (the Hugging Face cache counts). ``fetch_model(name)`` returns a local folder,
downloading a hub model with progress when the machine is online; offline, or when the hub
does not answer within seconds, it says so in one sentence that names the hub id.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import UserError
from workbench.models.presets import check_supported, preset_for

log = logging.getLogger("workbench.models")

# What a model folder needs; pickled weights (*.bin, *.pt) are never fetched nor loaded.
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.jinja", "*.py.txt"]
HUB_TIMEOUT_S = 8.0


@dataclass(frozen=True)
class ModelSource:
    name: str                # what the user gave
    kind: str                # demo | preset | folder | hub
    hub_id: str | None       # for presets and hub ids
    local_path: Path | None  # a folder with config.json on this machine, or None (not downloaded)

    @property
    def label(self) -> str:
        return self.hub_id or str(self.local_path or self.name)


def hub_cache_dir() -> str:
    """The Hugging Face hub cache, read from the environment now (not when huggingface_hub was imported)."""
    if os.environ.get("HF_HUB_CACHE"):
        return os.path.expanduser(os.environ["HF_HUB_CACHE"])
    hf_home = os.environ.get("HF_HOME") or os.path.join(os.path.expanduser("~"), ".cache", "huggingface")
    return os.path.join(os.path.expanduser(hf_home), "hub")


def offline() -> bool:
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().lower() in ("1", "true", "yes", "on")


def looks_like_path(text: str) -> bool:
    return text.startswith(("/", ".", "~")) or text.count("/") > 1


def cached_snapshot(hub_id: str) -> Path | None:
    """The cached snapshot folder of ``hub_id`` holding config.json and weights, or None. No network."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError, LocalEntryNotFoundError

    try:
        folder = Path(snapshot_download(hub_id, cache_dir=hub_cache_dir(), local_files_only=True))
    except (LocalEntryNotFoundError, HFValidationError, OSError, ValueError):
        return None
    if (folder / "config.json").is_file() and any(folder.glob("*.safetensors")):
        return folder
    return None


def locate_model(name_or_path: str) -> ModelSource:
    """What ``name_or_path`` is and where its files are on this machine (never downloads)."""
    from workbench.demo import ensure_demo, is_demo

    text = str(name_or_path or "").strip()
    if not text:
        raise UserError("The model is empty: give 'demo', a preset such as qwen2-vl-7b-instruct, a local model "
                        "folder or a hub id.")
    if is_demo(text):
        return ModelSource(text, "demo", None, ensure_demo(name=text).model)
    check_supported(text)
    preset = preset_for(text)
    if preset:
        return ModelSource(text, "preset", preset.hub_id, cached_snapshot(preset.hub_id))
    path = Path(text).expanduser()
    if path.exists():
        if path.is_file():
            raise UserError(f"{path} is a file, not a model: give the model folder (the one holding config.json).")
        if not (path / "config.json").is_file():
            raise UserError(f"{path} is not a model folder (no config.json in it): give the folder that holds "
                            "config.json and the weights.")
        return ModelSource(text, "folder", None, path)
    if looks_like_path(text):
        raise UserError(f"Model folder {path} does not exist: check the path, or give 'demo', a preset "
                        "(qwen2-vl-7b-instruct, qwen2.5-vl-7b-instruct, qwen3-vl-8b-instruct, ...) or a hub id like "
                        "Qwen/Qwen2.5-VL-7B-Instruct.")
    if text.count("/") != 1:
        raise UserError(f"Unknown model '{text}': it is not a local folder, 'demo', a preset (qwen2-vl-7b-instruct, "
                        "qwen2.5-vl-7b-instruct, qwen3-vl-8b-instruct, ...) or a hub id like Qwen/Qwen2.5-VL-7B-Instruct.")
    return ModelSource(text, "hub", text, cached_snapshot(text))


def fetch_model(name_or_path: str, progress=None) -> Path:
    """A local folder for the model, downloading it first when it is a hub model not yet cached.

    ``progress(done_bytes, total_bytes)`` is called while downloading (the CLI shows tqdm's bar
    instead when it is None). Offline, or with the hub unreachable, this fails within seconds.
    """
    source = locate_model(name_or_path)
    if source.local_path is not None:
        return source.local_path
    hub_id = source.hub_id
    where = f"the Hugging Face cache ({hub_cache_dir()})"
    if offline():
        raise UserError(f"{hub_id} is not in {where} and downloads are off (HF_HUB_OFFLINE is set): download it "
                        f"on a machine with internet (`hf download {hub_id}`) and copy the cache, or give a "
                        "local model folder.")
    _check_reachable(hub_id, where)
    return _download(hub_id, progress)


def _check_reachable(hub_id: str, where: str) -> None:
    """Ask the hub about ``hub_id`` with a short timeout: a missing repo or no network fails fast."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

    try:
        HfApi().model_info(hub_id, timeout=HUB_TIMEOUT_S)
    except GatedRepoError:
        raise UserError(f"{hub_id} is gated on the Hugging Face hub: accept its licence on its page and log in "
                        "with `hf auth login`, then try again.") from None
    except RepositoryNotFoundError:
        raise UserError(f"{hub_id} does not exist on the Hugging Face hub (or is private): check the name, or "
                        "give a preset such as qwen2-vl-7b-instruct.") from None
    except Exception as exc:  # connection refused, DNS, timeout: all mean "cannot download now"
        log.info("hub unreachable for %s: %r", hub_id, exc)
        raise UserError(f"{hub_id} is not in {where} and the Hugging Face hub did not answer within "
                        f"{HUB_TIMEOUT_S:.0f} s: connect to the internet, or download it elsewhere "
                        f"(`hf download {hub_id}`) and give the local folder.") from None


def _download(hub_id: str, progress) -> Path:
    from huggingface_hub import snapshot_download

    log.info("downloading %s", hub_id)
    kwargs = {"tqdm_class": _progress_tqdm(progress)} if progress is not None else {}
    try:
        folder = snapshot_download(hub_id, cache_dir=hub_cache_dir(), allow_patterns=DOWNLOAD_PATTERNS, **kwargs)
    except OSError as exc:
        raise UserError(f"Downloading {hub_id} failed ({str(exc).splitlines()[0][:200]}): check the disk space "
                        f"under {hub_cache_dir()} and the connection, then try again (finished files are kept).") from None
    return Path(folder)


def _progress_tqdm(progress):
    """A tqdm class that reports bytes to ``progress`` instead of drawing a bar."""
    from tqdm.auto import tqdm

    class Reporting(tqdm):
        def __init__(self, *args, **kwargs):
            self._bytes = kwargs.get("unit") == "B"  # the byte bars, not the per-file count
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

        def update(self, n=1):
            self.n += n or 0
            if self._bytes and self.total:
                progress(int(self.n), int(self.total))

    return Reporting
