"""docs/cli.md is generated from the help; `visionrag --help` stays light; the lazy command group."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import click
import pytest
from click.testing import CliRunner

from visionrag.clients import docs
from visionrag.clients.cli import LAZY_COMMANDS, main
from visionrag.clients.clitools import LazyCommand, VisionRAGGroup


def test_docs_cli_md_is_current():
    assert docs.DOC_PATH.exists(), "run: python -m visionrag.clients.docs --write"
    assert docs.DOC_PATH.read_text(encoding="utf-8") == docs.render(), (
        "docs/cli.md is out of date: run python -m visionrag.clients.docs --write"
    )


def test_docs_cover_every_command():
    page = docs.render()
    for path in (
        "visionrag",
        "visionrag ask",
        "visionrag search",
        "visionrag history list",
        "visionrag history show",
        "visionrag history delete",
        "visionrag history export",
    ):
        assert f"## `{path}`" in page
    for name, lazy in LAZY_COMMANDS.items():
        assert (f"## `visionrag {name}`" in page) == lazy.available()


def test_help_imports_neither_torch_nor_the_server():
    code = textwrap.dedent(
        """
        import sys
        from visionrag.clients.cli import main
        main(["--help"], standalone_mode=False)
        heavy = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "transformers", "litserve",
                        "server", "search", "fastembed", "qdrant_client"})
        print("HEAVY", heavy)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    assert "Commands:" in out.stdout


def test_lazy_commands_are_listed_exactly_when_their_module_exists():
    result = CliRunner().invoke(main, ["--help"])
    for name, lazy in LAZY_COMMANDS.items():
        assert (f"  {name} " in result.stdout) == lazy.available(), name


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    pkg = tmp_path / "lazyplug"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text(
        "import click\n@click.command()\ndef hello():\n    'Say hello.'\n    click.echo('hello from lazy')\n"
        "not_a_command = 3\n"
    )
    (pkg / "broken.py").write_text("import does_not_exist_anywhere\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield pkg
    for name in [m for m in sys.modules if m.startswith("lazyplug")]:
        del sys.modules[name]


def make_group(**lazy: str) -> click.Group:
    @click.group(cls=VisionRAGGroup, lazy_commands={k: LazyCommand(v, f"{k} help") for k, v in lazy.items()})
    def group() -> None:
        """Test group."""

    return group


def test_lazy_group_imports_a_command_only_when_run(plugin_dir):
    group = make_group(hello="lazyplug.good:hello", absent="lazyplug.nowhere:cmd")
    runner = CliRunner()
    result = runner.invoke(group, ["--help"])
    assert "hello  hello help" in result.stdout and "absent" not in result.stdout
    assert "lazyplug.good" not in sys.modules
    result = runner.invoke(group, ["hello"])
    assert result.exit_code == 0 and result.stdout == "hello from lazy\n"
    assert "lazyplug.good" in sys.modules
    result = runner.invoke(group, ["absent"])
    assert result.exit_code == 2 and "No such command" in result.stderr


def test_lazy_group_reports_a_broken_command_in_one_line(plugin_dir):
    group = make_group(broken="lazyplug.broken:cmd", odd="lazyplug.good:not_a_command")
    runner = CliRunner()
    for name, fragment in (("broken", "does_not_exist_anywhere"), ("odd", "is not a click command")):
        result = runner.invoke(group, [name])
        assert result.exit_code == 1, result.output
        assert (
            result.stderr.startswith(f"error: cannot load `visionrag {name}`") and fragment in result.stderr
        )
        assert "Traceback" not in result.output


def test_docs_module_check_and_print(capsys):
    assert docs.cli(["--check"]) == 0
    assert docs.cli([]) == 0
    assert capsys.readouterr().out == docs.render()
