"""Settings: flag > environment > .env > default, validation, and docs that match the code."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from visionrag.server.cli import SECRETS, serve_command
from visionrag.server.errors import ConfigError
from visionrag.server.settings import Settings, env_help, served_name_for

ROOT = Path(__file__).resolve().parents[2]


def test_precedence_flag_env_dotenv_default(tmp_path: Path) -> None:
    dotenv = tmp_path / ".env"
    dotenv.write_text("PORT=9001\nVISIONRAG_MAX_BATCH_SIZE=3\nCOLLECTION_NAME=from_dotenv\n")
    s = Settings.load(
        environ={"PORT": "9002", "VISIONRAG_MAX_BATCH_SIZE": "5"},
        dotenv_path=dotenv,
        overrides={"port": 9003, "max_batch_size": None},
    )
    assert s.port == 9003  # flag
    assert s.max_batch_size == 5  # environment
    assert s.collection_name == "from_dotenv"  # .env
    assert s.batch_timeout == 0.05  # default


def test_aliases_and_lists() -> None:
    s = Settings.load(
        environ={
            "DB_URL": "http://q:6333",
            "DB_API_KEY": "k",
            "VISIONRAG_ALLOW_PRIVATE_HOSTS": " 10.0.0.5, 192.168.0.0/16 ,,intranet",
        },
        dotenv_path=None,
    )
    assert s.qdrant_url == "http://q:6333" and s.qdrant_api_key == "k" and not s.embedded_store
    assert s.allow_private_hosts == ("10.0.0.5", "192.168.0.0/16", "intranet")
    # the documented name wins over the alias
    assert Settings.load(environ={"QDRANT_URL": "a", "DB_URL": "b"}, dotenv_path=None).qdrant_url == "a"


@pytest.mark.parametrize(
    ("env", "mentions"),
    [
        ({"PORT": "eighty"}, "PORT"),
        ({"PORT": "80"}, "port"),
        ({"VISIONRAG_PLACEMENT": "spread"}, "placement"),
        ({"HOST": "192.168.1.1"}, "host"),
        ({"VISIONRAG_DEVICES": "-1"}, "devices"),
        ({"VISIONRAG_DEFAULT_MAX_TOKENS": "9000"}, "max_tokens"),
        ({"QDRANT_SHARD_NUMBER": "two"}, "QDRANT_SHARD_NUMBER"),
        ({"QDRANT_REPLICATION_FACTOR": "0"}, "replication_factor"),
        ({"QDRANT_ON_DISK_PAYLOAD": "maybe"}, "QDRANT_ON_DISK_PAYLOAD"),
        ({"QDRANT_WRITE_CONSISTENCY_FACTOR": "3", "QDRANT_REPLICATION_FACTOR": "2"}, "write_consistency"),
    ],
)
def test_bad_settings_say_what_is_wrong(env: dict, mentions: str) -> None:
    with pytest.raises(ConfigError, match=mentions):
        Settings.load(environ=env, dotenv_path=None)


def test_distribution_settings_reach_the_history_config() -> None:
    env = {
        "QDRANT_SHARD_NUMBER": "4",
        "QDRANT_REPLICATION_FACTOR": "2",
        "QDRANT_WRITE_CONSISTENCY_FACTOR": "2",
        "QDRANT_ON_DISK_PAYLOAD": "false",
    }
    config = Settings.load(environ=env, dotenv_path=None).history_config()
    assert (config.shard_number, config.replication_factor, config.write_consistency_factor) == (4, 2, 2)
    assert config.on_disk_payload is False
    default = Settings.load(environ={}, dotenv_path=None).history_config()
    assert default.shard_number is None and default.replication_factor is None and default.on_disk_payload


def test_the_history_config_defaults_are_the_server_defaults() -> None:
    """search/ keeps its own defaults (tools build a HistoryConfig directly): they must not drift."""
    from visionrag.search.config import HistoryConfig

    assert Settings.load(environ={}, dotenv_path=None).history_config() == HistoryConfig()


def test_describe_hides_secrets() -> None:
    s = Settings.load(
        environ={"HF_TOKEN": "hf_secret", "VISIONRAG_API_KEY": "k1", "QDRANT_API_KEY": "k2"}, dotenv_path=None
    )
    text = str(s.describe())
    assert "hf_secret" not in text and "k1" not in text and "k2" not in text


def test_serve_help_documents_every_setting_but_secrets() -> None:
    out = CliRunner().invoke(serve_command, ["--help"], terminal_width=200).output
    secrets = {"HF_TOKEN", "VISIONRAG_API_KEY", "QDRANT_API_KEY / DB_API_KEY"}
    for name, _default, _help in env_help():
        if name in secrets:  # read from the environment only, never a flag (process lists show flags)
            assert f"[env {name}" not in out
            assert name.split(" / ")[0] in out  # but the help says where they come from
        else:
            assert f"[env {name}" in out, f"{name} missing from serve --help"
    for flag in ("--hf-token", "--api-key", "--qdrant-api-key"):
        assert flag not in out
    for flag in (
        "--port",
        "--host",
        "--model",
        "--devices",
        "--placement",
        "--max-batch-size",
        "--batch-timeout",
        "--data-dir",
    ):
        assert flag in out
    assert len(SECRETS) == len(secrets)


def test_readme_names_every_setting() -> None:
    readme = (ROOT / "README.md").read_text()
    for name, _default, _help in env_help():
        for variable in name.split(" / "):
            assert f"`{variable}`" in readme, f"{variable} missing from the README's configuration table"


def test_serve_rejects_a_bad_flag_with_a_usage_error() -> None:
    result = CliRunner().invoke(serve_command, ["--placement", "spread", "--env-file", "/nonexistent"])
    assert result.exit_code == 2 and "placement" in result.output


def test_served_model_name_is_never_a_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hub = "meta-llama/Llama-3.2-11B-Vision-Instruct"
    assert served_name_for(hub) == hub
    local = tmp_path / "models" / "my-mllama"
    local.mkdir(parents=True)
    assert served_name_for(str(local)) == "my-mllama"
    assert served_name_for(str(local) + "/") == "my-mllama"
    assert served_name_for("/no/such/dir/vision") == "vision"  # looks like a path: still only its name
    monkeypatch.chdir(tmp_path)
    assert served_name_for("models/my-mllama") == "my-mllama"  # relative, but a directory here
    assert served_name_for("./models/my-mllama") == "my-mllama"
    settings = Settings.load(environ={"MODEL_NAME": str(local)}, dotenv_path=None)
    assert settings.served_name == "my-mllama"
    named = Settings.load(
        overrides={"served_model_name": "acme/vision"}, environ={"MODEL_NAME": str(local)}, dotenv_path=None
    )
    assert named.served_name == "acme/vision"
    result = CliRunner().invoke(serve_command, ["--help"])
    assert "--served-model-name" in result.output and "VISIONRAG_SERVED_MODEL_NAME" in result.output
