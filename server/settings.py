"""One settings object, built once at start-up: a CLI flag beats the environment, which beats `.env`,
which beats the default. Nothing here reads the environment at import time."""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from dotenv import dotenv_values

from visionrag.search.config import HistoryConfig
from visionrag.server.errors import ConfigError

DEFAULT_MODEL = "meta-llama/Llama-3.2-11B-Vision-Instruct"


def _env(*names: str, help: str) -> dict[str, Any]:
    """Field metadata: the environment names a setting is read from (first wins) and its help text."""
    return {"env": names, "help": help}


@dataclass(frozen=True)
class Settings:
    # model
    model_name: str = field(
        default=DEFAULT_MODEL, metadata=_env("MODEL_NAME", help="hub id or local directory")
    )
    served_model_name: str | None = field(
        default=None,
        metadata=_env(
            "VISIONRAG_SERVED_MODEL_NAME",
            help="model id the API shows (responses, /v1/models); default: the hub id, or a local directory's name",
        ),
    )
    hf_token: str | None = field(default=None, metadata=_env("HF_TOKEN", help="token for the gated model"))
    accelerator: str = field(default="auto", metadata=_env("VISIONRAG_ACCELERATOR", help="auto, cuda or cpu"))
    devices: str = field(
        default="auto",
        metadata=_env("VISIONRAG_DEVICES", help="number of GPUs to use, or auto for all visible ones"),
    )
    placement: str = field(
        default="replicate",
        metadata=_env(
            "VISIONRAG_PLACEMENT",
            help="replicate: one worker per GPU with a full copy; shard: one worker over all GPUs",
        ),
    )
    dtype: str = field(
        default="auto",
        metadata=_env("VISIONRAG_DTYPE", help="auto (bf16 on GPU, fp32 on CPU), bf16, fp16, fp32"),
    )
    compile: bool = field(
        default=False,
        metadata=_env(
            "VISIONRAG_COMPILE",
            help="static KV cache, which generate compiles with torch.compile on a GPU (off until measured); needs VISIONRAG_BATCHING=static",
        ),
    )
    max_batch_size: int = field(
        default=8, metadata=_env("VISIONRAG_MAX_BATCH_SIZE", help="requests generated together at most")
    )
    batching: str = field(
        default="continuous",
        metadata=_env(
            "VISIONRAG_BATCHING",
            help="continuous or static: continuous lets requests join the running batch at the next token",
        ),
    )
    max_batch_tokens: int = field(
        default=0,
        metadata=_env(
            "VISIONRAG_MAX_BATCH_TOKENS",
            help="continuous batching: prompt + max_tokens summed over a batch's rows at most (0: no limit)",
        ),
    )
    batch_timeout: float = field(
        default=0.05,
        metadata=_env("VISIONRAG_BATCH_TIMEOUT", help="seconds a worker waits to fill a batch"),
    )
    default_max_tokens: int = field(
        default=512,
        metadata=_env("VISIONRAG_DEFAULT_MAX_TOKENS", help="max_tokens when a request gives none"),
    )
    max_tokens_limit: int = field(
        default=4096, metadata=_env("VISIONRAG_MAX_TOKENS_LIMIT", help="largest max_tokens a request may ask")
    )
    # history
    text_model: str = field(
        default="Qdrant/clip-ViT-B-32-text", metadata=_env("TEXT_MODEL", help="fastembed CLIP text model")
    )
    image_model: str = field(
        default="Qdrant/clip-ViT-B-32-vision",
        metadata=_env("IMAGE_MODEL", help="fastembed CLIP vision model"),
    )
    text_model_path: Path | None = field(
        default=None, metadata=_env("TEXT_MODEL_PATH", help="local folder of the CLIP text model (offline)")
    )
    image_model_path: Path | None = field(
        default=None,
        metadata=_env("IMAGE_MODEL_PATH", help="local folder of the CLIP vision model (offline)"),
    )
    embed_threads: int = field(
        default=1,
        metadata=_env(
            "VISIONRAG_EMBED_THREADS",
            help="CPU threads for CLIP embedding while indexing; low keeps indexing off generation's cores",
        ),
    )
    query_threads: int = field(
        default=0,
        metadata=_env(
            "VISIONRAG_QUERY_THREADS",
            help="CPU threads for CLIP embedding of search queries; 0: min(4, CPU cores). A value other than "
            "VISIONRAG_EMBED_THREADS loads a second copy of the CLIP models for queries",
        ),
    )
    qdrant_url: str | None = field(
        default=None,
        metadata=_env("QDRANT_URL", "DB_URL", help="Qdrant server or Cloud URL; unset: embedded store"),
    )
    qdrant_api_key: str | None = field(
        default=None, metadata=_env("QDRANT_API_KEY", "DB_API_KEY", help="API key for QDRANT_URL")
    )
    collection_name: str = field(
        default="visionrag_history", metadata=_env("COLLECTION_NAME", help="Qdrant collection")
    )
    data_dir: Path = field(
        default=Path("./data"), metadata=_env("VISIONRAG_DATA_DIR", help="journal and embedded store")
    )
    shard_number: int | None = field(
        default=None,
        metadata=_env(
            "QDRANT_SHARD_NUMBER",
            help="shards of a new collection on a Qdrant server or cluster; unset: the server's default (one per node)",
        ),
    )
    replication_factor: int | None = field(
        default=None,
        metadata=_env(
            "QDRANT_REPLICATION_FACTOR",
            help="copies of each shard in a Qdrant cluster (2 survives the loss of a node); unset: server default",
        ),
    )
    write_consistency_factor: int | None = field(
        default=None,
        metadata=_env(
            "QDRANT_WRITE_CONSISTENCY_FACTOR",
            help="replicas that must confirm a write (at most the replication factor); unset: server default",
        ),
    )
    on_disk_payload: bool = field(
        default=True,
        metadata=_env(
            "QDRANT_ON_DISK_PAYLOAD",
            help="keep payloads (answers and image copies) on disk on a Qdrant server; indexed fields stay in RAM",
        ),
    )
    # HTTP
    host: str = field(default="0.0.0.0", metadata=_env("HOST", help="0.0.0.0, 127.0.0.1 or ::"))
    port: int = field(default=8000, metadata=_env("PORT", help="HTTP port"))
    api_key: str | None = field(
        default=None,
        metadata=_env(
            "VISIONRAG_API_KEY",
            help="when set, every route but /health, /ping and the web page's files needs this key",
        ),
    )
    # image fetching
    allow_private_hosts: tuple[str, ...] = field(
        default=(),
        metadata=_env(
            "VISIONRAG_ALLOW_PRIVATE_HOSTS",
            help="comma list of IPs, CIDRs or host names image URLs may reach although private",
        ),
    )
    max_image_bytes: int = field(
        default=20_000_000,
        metadata=_env("VISIONRAG_MAX_IMAGE_BYTES", help="largest image download or upload"),
    )
    max_image_pixels: int = field(
        default=40_000_000,
        metadata=_env("VISIONRAG_MAX_IMAGE_PIXELS", help="largest width x height decoded (bomb guard)"),
    )
    fetch_timeout: float = field(
        default=10.0, metadata=_env("VISIONRAG_FETCH_TIMEOUT", help="seconds for a whole image download")
    )
    # limits
    max_query_chars: int = field(
        default=8000, metadata=_env("VISIONRAG_MAX_QUERY_CHARS", help="longest question in characters")
    )
    context_max_tokens: int = field(
        default=1024,
        metadata=_env(
            "VISIONRAG_CONTEXT_TOKENS",
            help="most prompt tokens (estimated, 3 characters each) earlier interactions take in an answer with context",
        ),
    )
    max_body_bytes: int = field(
        default=30_000_000, metadata=_env("VISIONRAG_MAX_BODY_BYTES", help="largest request body")
    )
    max_queue: int = field(
        default=64,
        metadata=_env("VISIONRAG_MAX_QUEUE", help="requests waiting or running before new ones get 503"),
    )
    generation_timeout: float = field(
        default=300.0,
        metadata=_env("VISIONRAG_GENERATION_TIMEOUT", help="seconds one answer may take"),
    )
    shutdown_grace: float = field(
        default=30.0,
        metadata=_env(
            "VISIONRAG_SHUTDOWN_GRACE",
            help="seconds SIGTERM / SIGINT lets in-flight answers finish before they are cut",
        ),
    )
    log_level: str = field(default="info", metadata=_env("VISIONRAG_LOG_LEVEL", help="debug, info, warning"))

    @classmethod
    def load(
        cls,
        overrides: Mapping[str, Any] | None = None,
        environ: Mapping[str, str] | None = None,
        dotenv_path: str | os.PathLike[str] | None = ".env",
    ) -> Settings:
        """Defaults < `.env` < environment < overrides (CLI flags; None values are ignored)."""
        merged: dict[str, str] = {}
        if dotenv_path is not None and Path(dotenv_path).is_file():
            merged.update({k: v for k, v in dotenv_values(dotenv_path).items() if v is not None})
        merged.update(os.environ if environ is None else environ)
        values: dict[str, Any] = {}
        for f in fields(cls):
            for name in f.metadata["env"]:
                raw = merged.get(name)
                if raw not in (None, ""):
                    values[f.name] = _coerce(f, raw, name)
                    break
        for key, value in (overrides or {}).items():
            if value is None:
                continue
            f = _field(key)
            values[key] = _coerce(f, value, f"--{key.replace('_', '-')}") if isinstance(value, str) else value
        settings = cls(**values)
        settings.validate()
        return settings

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)

    def validate(self) -> None:
        if self.placement not in ("replicate", "shard"):
            raise ConfigError(f"placement must be 'replicate' or 'shard', not {self.placement!r}")
        if self.accelerator not in ("auto", "cuda", "cpu"):
            raise ConfigError(f"accelerator must be auto, cuda or cpu, not {self.accelerator!r}")
        if self.devices != "auto" and not (self.devices.isdigit() and int(self.devices) > 0):
            raise ConfigError(f"devices must be 'auto' or a positive number, not {self.devices!r}")
        if self.batching not in ("continuous", "static"):
            raise ConfigError(f"batching must be 'continuous' or 'static', not {self.batching!r}")
        if self.query_threads < 0:
            raise ConfigError("query_threads must not be negative (0 means min(4, CPU cores))")
        if self.compile and self.batching != "static":
            raise ConfigError(
                "compile works with static batching only (continuous batching grows its cache per step): "
                "set VISIONRAG_BATCHING=static as well, or leave VISIONRAG_COMPILE off"
            )
        if self.max_batch_tokens < 0:
            raise ConfigError("max_batch_tokens must not be negative (0 means no limit)")
        if self.dtype not in ("auto", "bf16", "fp16", "fp32"):
            raise ConfigError(f"dtype must be auto, bf16, fp16 or fp32, not {self.dtype!r}")
        if self.host not in ("0.0.0.0", "127.0.0.1", "::"):
            raise ConfigError(f"host must be 0.0.0.0, 127.0.0.1 or :: (LitServe's rule), not {self.host!r}")
        if not 1024 <= self.port <= 65535:
            raise ConfigError(f"port must be between 1024 and 65535, not {self.port}")
        for name in (
            "max_batch_size",
            "embed_threads",
            "default_max_tokens",
            "max_tokens_limit",
            "max_image_bytes",
            "max_image_pixels",
            "max_query_chars",
            "context_max_tokens",
            "max_body_bytes",
            "max_queue",
        ):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.default_max_tokens > self.max_tokens_limit:
            raise ConfigError("default_max_tokens must not exceed max_tokens_limit")
        for name in ("shard_number", "replication_factor", "write_consistency_factor"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1 (or unset for the server's default)")
        wcf, rf = self.write_consistency_factor, self.replication_factor
        if wcf is not None and rf is not None and wcf > rf:
            raise ConfigError(
                "write_consistency_factor must not exceed replication_factor (a write waits for copies)"
            )
        for name in ("batch_timeout", "fetch_timeout", "generation_timeout", "shutdown_grace"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative")

    @functools.cached_property
    def served_name(self) -> str:
        """The model id every response shows: never a filesystem path of the server."""
        if self.served_model_name:
            return self.served_model_name
        return served_name_for(self.model_name)

    @property
    def embedded_store(self) -> bool:
        return not self.qdrant_url

    def history_config(self) -> HistoryConfig:
        """The history layer's share of the settings (search/ never imports this module)."""
        names = {f.name for f in fields(HistoryConfig)}
        return HistoryConfig(**{name: getattr(self, name) for name in names})

    def describe(self) -> dict[str, Any]:
        """The settings without secrets, for the start-up log line."""
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name in ("hf_token", "qdrant_api_key", "api_key"):
                value = "***" if value else None
            out[f.name] = str(value) if isinstance(value, Path) else value
        return out


def served_name_for(model_name: str) -> str:
    """A hub id as it is (`meta-llama/Llama-3.2-11B-Vision-Instruct`); a local directory by its name."""
    path = Path(model_name).expanduser()
    if model_name.startswith(("/", ".", "~")) or path.is_dir():
        return path.resolve().name or model_name
    return model_name


def env_help() -> list[tuple[str, str, str]]:
    """(variable names, default, meaning) for the README and `--help`."""
    rows = []
    for f in fields(Settings):
        default = f.default if not isinstance(f.default, tuple) else ",".join(f.default)
        rows.append(
            (" / ".join(f.metadata["env"]), "" if default is None else str(default), f.metadata["help"])
        )
    return rows


def _field(name: str) -> dataclasses.Field:
    for f in fields(Settings):
        if f.name == name:
            return f
    raise ConfigError(f"unknown setting {name!r}")


_BOOLS = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}


def parse_bool(raw: str) -> bool:
    """true/false, 1/0, yes/no, on/off (any case); ValueError otherwise. Settings and form fields share it."""
    value = raw.strip().lower()
    if value not in _BOOLS:
        raise ValueError(raw)
    return _BOOLS[value]


def _coerce(f: dataclasses.Field, raw: str, source: str) -> Any:
    kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", str(f.type))
    try:
        if kind in ("int", "int | None"):
            return int(raw)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            return parse_bool(raw)
        if kind.startswith("Path"):
            return Path(raw).expanduser()
        if kind.startswith("tuple"):
            return tuple(part.strip() for part in raw.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{source}={raw!r} is not a valid {kind}") from None
    return raw
