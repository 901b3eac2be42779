"""`visionrag serve`: every setting is a flag, generated from the Settings fields so the help can never
drift from what the server reads. Secrets (tokens, keys) are read from the environment only, so they
never show in a process list."""

from __future__ import annotations

import logging
import sys
from dataclasses import MISSING, fields
from pathlib import Path
from typing import Any

import click

from visionrag.server.settings import Settings

SECRETS = {"hf_token", "api_key", "qdrant_api_key"}
SHORT_NAMES = {"model_name": "--model", "collection_name": "--collection"}
_TYPES: dict[str, Any] = {"int": int, "float": float, "bool": click.BOOL}


def _settings_options(command: Any) -> Any:
    for f in reversed(fields(Settings)):
        if f.name in SECRETS:
            continue
        kind = f.type if isinstance(f.type, str) else f.type.__name__
        flag = SHORT_NAMES.get(f.name, "--" + f.name.replace("_", "-"))
        default = "" if f.default is MISSING or f.default in (None, ()) else f.default
        if isinstance(default, tuple):
            default = ",".join(default)
        env = " / ".join(f.metadata["env"])
        text = f.metadata["help"]
        help_text = f"{text[:1].upper()}{text[1:]}. [env {env}" + (
            f"; default {default}]" if default != "" else "]"
        )
        click_type: Any = _TYPES.get(kind, click.Path(path_type=Path) if kind.startswith("Path") else str)
        names = [flag] if flag == "--" + f.name.replace("_", "-") else [flag, "--" + f.name.replace("_", "-")]
        command = click.option(*names, f.name, type=click_type, default=None, help=help_text)(command)
    return command


@click.command("serve", context_settings={"help_option_names": ["-h", "--help"]})
@_settings_options
@click.option(
    "--env-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path(".env"),
    show_default=True,
    help="Read settings from this dotenv file (the environment beats it, flags beat both).",
)
def serve_command(env_file: Path, **overrides: Any) -> None:
    """Start the VisionRAG server: Llama 3.2 Vision behind /predict and /v1/chat/completions, with
    history search at /history and the web page at /.

    A flag beats the environment, which beats the .env file, which beats the default. HF_TOKEN,
    VISIONRAG_API_KEY and QDRANT_API_KEY are read from the environment (or .env) only.

    \b
    Examples:
      visionrag serve                                   # 11B model on every visible GPU
      visionrag serve --model ./my-mllama --accelerator cpu --port 8080
      visionrag serve --placement shard --model meta-llama/Llama-3.2-90B-Vision-Instruct
    """
    from visionrag.server.app import serve
    from visionrag.server.errors import ConfigError

    try:
        settings = Settings.load(overrides=overrides, dotenv_path=env_file)
    except ConfigError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        sys.exit(serve(settings))
    except ConfigError as exc:
        logging.getLogger(__name__).debug("start-up refused", exc_info=True)
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
