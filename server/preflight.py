"""Checks `visionrag serve` runs before it spawns anything, so a wrong setting fails in seconds with one
line that names the setting and says what to do, instead of a traceback from a worker after a long
wait (or a silent hang on a network that drops packets).

What it checks: the model (a local directory with its configs, or a hub id that is cached, reachable
and, for a gated model, has a token) and the two CLIP models (a local folder, or cached, or reachable).
The hub is asked at most once per repository, each time under a hard deadline."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from visionrag.server.errors import ConfigError
from visionrag.server.settings import DEFAULT_MODEL, Settings

log = logging.getLogger(__name__)

HUB_DEADLINE_S = 20.0
HINT = (
    "set MODEL_NAME (and TEXT_MODEL_PATH / IMAGE_MODEL_PATH) to local directories, or HF_HUB_OFFLINE=1 "
    "with cached copies, and HF_TOKEN for gated models"
)
PROCESSOR_CONFIGS = ("preprocessor_config.json", "processor_config.json")


class PreflightError(ConfigError):
    """A setting that cannot work; the message is the one line the user sees."""


def preflight(settings: Settings, hub: Hub | None = None) -> None:
    """Raise `PreflightError` for the first setting that cannot work."""
    hub = hub or Hub(settings.hf_token)
    check_model(settings.model_name, hub)
    check_clip("TEXT_MODEL", settings.text_model, "TEXT_MODEL_PATH", settings.text_model_path, hub)
    check_clip("IMAGE_MODEL", settings.image_model, "IMAGE_MODEL_PATH", settings.image_model_path, hub)


def looks_like_path(name: str) -> bool:
    """A hub id is `org/name`; anything else with a path's shape is meant as a directory."""
    return name.startswith(("/", ".", "~", "\\")) or name.count("/") > 1 or Path(name).expanduser().exists()


def check_model(name: str, hub: Hub) -> None:
    if looks_like_path(name):
        folder = Path(name).expanduser()
        if not folder.is_dir():
            raise PreflightError(f"MODEL_NAME={name}: no such directory; give a model directory or a hub id")
        if not (folder / "config.json").is_file():
            raise PreflightError(
                f"MODEL_NAME={name}: no config.json in this directory (save the model there with "
                "save_pretrained, or point MODEL_NAME at the folder that has it)"
            )
        if not any((folder / f).is_file() for f in PROCESSOR_CONFIGS):
            raise PreflightError(
                f"MODEL_NAME={name}: no preprocessor_config.json in this directory (save the processor "
                "there too: AutoProcessor.from_pretrained(id).save_pretrained(dir))"
            )
        return
    from huggingface_hub import try_to_load_from_cache

    cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    if cached:
        return
    if hub.offline:
        raise PreflightError(
            f"MODEL_NAME={name}: no cached copy and HF_HUB_OFFLINE=1; download it first "
            f"(hf download {name}) or set MODEL_NAME to a local directory"
        )
    if name == DEFAULT_MODEL and not hub.token:
        raise PreflightError(
            f"MODEL_NAME={name}: a gated model and HF_TOKEN is not set; accept its licence on the hub and "
            "set HF_TOKEN, or set MODEL_NAME to a local directory"
        )
    hub.check(name, "MODEL_NAME")


def check_clip(setting: str, name: str, path_setting: str, path: Path | None, hub: Hub) -> None:
    if path is not None:
        if not path.is_dir():
            raise PreflightError(f"{path_setting}={path}: no such directory; give the folder of {name}")
        if not any(path.glob("*.onnx")):
            raise PreflightError(f"{path_setting}={path}: no .onnx model in this directory")
        return
    if _clip_cached(name):
        return
    if hub.offline:
        raise PreflightError(
            f"{setting}={name}: not in fastembed's cache and HF_HUB_OFFLINE=1; set {path_setting} to a "
            "local folder of the model"
        )
    hub.check(name, setting)


def _clip_cached(name: str) -> bool:
    """fastembed keeps its models in its own cache folder (FASTEMBED_CACHE_PATH, read by fastembed)."""
    from fastembed.common.utils import define_cache_dir

    wanted = name.split("/")[-1].lower()
    try:
        folders = [d for d in define_cache_dir().iterdir() if d.is_dir() and wanted in d.name.lower()]
    except OSError:
        return False
    return any(next(d.rglob("*.onnx"), None) is not None for d in folders)


class Hub:
    """The model hub as preflight sees it: by default HF_HUB_OFFLINE and HF_ENDPOINT as huggingface_hub
    read them, and the token from HF_TOKEN or huggingface_hub's login; questions share one deadline."""

    def __init__(
        self,
        token: str | None = None,
        *,
        endpoint: str | None = None,
        offline: bool | None = None,
        deadline: float = HUB_DEADLINE_S,
    ) -> None:
        from huggingface_hub import constants, get_token

        self.deadline = deadline
        self.until: float | None = None
        self.offline = bool(constants.HF_HUB_OFFLINE) if offline is None else offline
        self.endpoint = endpoint or constants.ENDPOINT
        self.token = token or get_token()

    def check(self, repo: str, setting: str) -> None:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import GatedRepoError, RepositoryNotFoundError

        if self.until is None:  # one budget for every question, so preflight ends within `deadline`
            self.until = time.monotonic() + self.deadline
        try:
            _within(
                max(0.5, self.until - time.monotonic()),
                lambda: HfApi(endpoint=self.endpoint).auth_check(repo, token=self.token or False),
            )
        except GatedRepoError:
            raise PreflightError(
                f"{setting}={repo}: gated, and HF_TOKEN has no access; accept its licence on the hub with "
                "the account of HF_TOKEN, or set MODEL_NAME to a local directory"
            ) from None
        except RepositoryNotFoundError:
            raise PreflightError(
                f"{setting}={repo}: no such model on {self.endpoint} (or it is private and HF_TOKEN "
                "cannot see it)"
            ) from None
        except TimeoutError:
            raise PreflightError(
                f"{setting}={repo}: the model hub at {self.endpoint} did not answer within "
                f"{self.deadline:g} s; {HINT}"
            ) from None
        except Exception as exc:  # refused, DNS, TLS, proxy: all mean "cannot reach the hub"
            log.debug("asking the hub about %s failed", repo, exc_info=True)
            raise PreflightError(
                f"{setting}={repo}: cannot reach the model hub at {self.endpoint} "
                f"({type(exc).__name__}); {HINT}"
            ) from None


def _within(seconds: float, call: Callable[[], Any]) -> Any:
    """Run `call` in a daemon thread and give up after `seconds` (a black-holed connect or DNS lookup
    can outlast any socket timeout)."""
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            result["value"] = call()
        except BaseException as exc:
            result["error"] = exc

    worker = threading.Thread(target=run, name="preflight-hub", daemon=True)
    worker.start()
    worker.join(seconds)
    if worker.is_alive():
        raise TimeoutError(seconds)
    if "error" in result:
        raise result["error"]
    return result.get("value")
