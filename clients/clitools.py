"""Pieces of the `visionrag` command line: the lazy command group, error reporting, option types and
terminal rendering. Nothing here imports the server or the model.
"""

from __future__ import annotations

import errno
import importlib
import importlib.util
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import click

from visionrag.clients.client import DEFAULT_URL, VisionRAG
from visionrag.clients.errors import VisionRAGError
from visionrag.clients.types import Interaction

F = TypeVar("F", bound=Callable[..., Any])


class CLIError(click.ClickException):
    """One line on stderr, `error: ...`, and exit code 1."""

    exit_code = 1

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


@dataclass(frozen=True)
class LazyCommand:
    """A command defined in another package, imported only when it is run."""

    import_path: str  # "package.module:attribute"
    short_help: str

    @property
    def module(self) -> str:
        return self.import_path.partition(":")[0]

    def available(self) -> bool:
        """Whether the module exists, found without importing it: its parent package is imported (the
        `visionrag` packages are light), the module itself is not."""
        try:
            return importlib.util.find_spec(self.module) is not None
        except ModuleNotFoundError:
            return False

    def load(self, name: str) -> click.Command | None:
        module_name, _, attribute = self.import_path.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name and module_name.startswith(exc.name):
                return None  # the module is not there (yet): no such command
            raise CLIError(f"cannot load `visionrag {name}`: {exc}") from None
        command = getattr(module, attribute, None)
        if not isinstance(command, click.Command):
            raise CLIError(f"cannot load `visionrag {name}`: {self.import_path} is not a click command")
        return command


class VisionRAGGroup(click.Group):
    """A click group whose commands may live in other packages, imported on first use only (so that
    `visionrag --help` never imports torch), and which reports client errors as one line."""

    def __init__(self, *args: Any, lazy_commands: dict[str, LazyCommand] | None = None, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.lazy_commands = dict(lazy_commands or {})
        self._loaded: dict[str, click.Command | None] = {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        lazy = [name for name, cmd in self.lazy_commands.items() if cmd.available()]
        return sorted({*super().list_commands(ctx), *lazy})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands or cmd_name not in self.lazy_commands:
            return super().get_command(ctx, cmd_name)
        if cmd_name not in self._loaded:
            self._loaded[cmd_name] = self.lazy_commands[cmd_name].load(cmd_name)
        return self._loaded[cmd_name]

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list, using the declared short help of lazy commands (no import)."""
        limit = formatter.width - 6 - max((len(n) for n in self.list_commands(ctx)), default=0)
        rows = []
        for name in self.list_commands(ctx):
            command = self.commands.get(name)
            if command is not None:
                if not command.hidden:
                    rows.append((name, command.get_short_help_str(limit)))
            else:
                rows.append((name, self.lazy_commands[name].short_help))
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except VisionRAGError as exc:
            raise CLIError(str(exc)) from None
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise
            where = f": {exc.filename}" if exc.filename else ""
            raise CLIError(f"{exc.strerror or exc}{where}") from None


@dataclass
class Connection:
    """The global options, turned into a client when a command needs one."""

    url: str
    api_key: str | None
    timeout: float
    _client: VisionRAG | None = None

    def client(self) -> VisionRAG:
        if self._client is None:
            timeout = (min(10.0, self.timeout), self.timeout)
            self._client = VisionRAG(self.url, api_key=self.api_key or "", timeout=timeout)
        return self._client


def _override(field: str) -> Callable[[click.Context, click.Parameter, Any], None]:
    def store(ctx: click.Context, param: click.Parameter, value: Any) -> None:
        connection = ctx.find_object(Connection)
        if value is not None and connection is not None:
            setattr(connection, field, value)

    return store


DEFAULT_TIMEOUT = 300.0
# (flag, Connection field, metavar, type, help): the global options, repeatable after a subcommand
CONNECTION = (
    (
        "--url",
        "url",
        "URL",
        None,
        f"Address of the VisionRAG server [env VISIONRAG_URL; default {DEFAULT_URL}].",
    ),
    (
        "--api-key",
        "api_key",
        "KEY",
        None,
        "API key of the server, sent as `Authorization: Bearer KEY` [env VISIONRAG_API_KEY].",
    ),
    (
        "--timeout",
        "timeout",
        "SECONDS",
        click.FloatRange(min=0, min_open=True),
        f"How long to wait for the server [env VISIONRAG_TIMEOUT; default {DEFAULT_TIMEOUT:g}].",
    ),
)


def connection_options(command: F) -> F:
    """--url, --api-key and --timeout on a subcommand too (`visionrag ask IMG Q --url ...`): given there,
    they beat the same option before the command, which beats the environment."""
    for flag, field, metavar, kind, text in reversed(CONNECTION):
        option = click.option(
            flag, metavar=metavar, type=kind, expose_value=False, callback=_override(field), help=text
        )
        command = option(command)
    return command


def client_of(ctx: click.Context) -> VisionRAG:
    """The client for the global --url/--api-key/--timeout options."""
    return ctx.find_object(Connection).client()


_RELATIVE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*$", re.IGNORECASE)
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


class When(click.ParamType):
    """An ISO 8601 date or time (2024-05-01, 2024-05-01T12:00:00Z), or an age: 30m, 12h, 7d, 2w."""

    name = "WHEN"

    def convert(self, value: Any, param: Any, ctx: Any) -> str:
        if isinstance(value, datetime):
            return value.isoformat()
        text = str(value).strip()
        age = _RELATIVE.match(text)
        if age:
            delta = timedelta(**{_UNITS[age.group(2).lower()]: float(age.group(1))})
            return (datetime.now(UTC) - delta).replace(microsecond=0).isoformat()
        try:
            datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            self.fail(f"{value!r} is neither an ISO 8601 date/time nor an age like 7d", param, ctx)
        return text


# -- rendering -------------------------------------------------------------------------------------


def one_line(text: str | None, width: int) -> str:
    """`text` on one line, cut to `width` characters with "..." when longer."""
    flat = " ".join((text or "").split())
    if len(flat) <= width:
        return flat
    return flat[: max(0, width - 3)].rstrip() + "..."


def local_time(value: datetime | None) -> str:
    """A timestamp in the local time zone, to the minute."""
    if value is None:
        return "-"
    if value.tzinfo is not None:
        value = value.astimezone()
    return value.strftime("%Y-%m-%d %H:%M")


def table(headers: list[str], rows: list[list[str]], flexible: tuple[int, ...]) -> str:
    """A plain-text table fitting the terminal; columns in `flexible` share the width left over."""
    total = max(100, shutil.get_terminal_size((120, 24)).columns)
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(headers)]
    fixed = sum(w for i, w in enumerate(widths) if i not in flexible) + 2 * (len(headers) - 1)
    share = max(12, (total - fixed) // max(1, len(flexible)))
    for i in flexible:
        widths[i] = min(widths[i], share)
    lines = []
    for row in [headers, *rows]:
        cells = [one_line(cell, widths[i]).ljust(widths[i]) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def describe(interaction: Interaction) -> str:
    """An interaction as a readable block: fields, then the question and the whole answer."""
    fields = [
        ("id", interaction.id),
        ("time", local_time(interaction.created_at)),
        ("model", interaction.model or "-"),
        ("user", interaction.user or "-"),
        ("tags", ", ".join(interaction.tags) or "-"),
        ("image", interaction.image_url or interaction.image or "-"),
    ]
    head = "\n".join(f"{name + ':':<7}{value}" for name, value in fields)
    if interaction.context:  # the earlier interactions it was answered with
        head += f"\nbuilt on: {', '.join(interaction.context)}"
    return f"{head}\n\nquestion:\n{interaction.query}\n\nanswer:\n{interaction.answer}"
