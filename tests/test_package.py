"""The install: one import package, `visionrag`, over the repository's folders; no generic top-level
`server` / `search` / `clients` names; the client's public import works from outside the repository."""

from __future__ import annotations

import ast
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIRS = ("server", "search", "clients", "visionrag", "tests")


def test_wheel_installs_one_package_and_the_client_imports_from_outside(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            tmp_path,
            ROOT,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("visionrag-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith((".dist-info", ".data"))}
    assert tops == {"visionrag"}, tops
    assert "visionrag/server/static/index.html" in names
    target = tmp_path / "site"
    with zipfile.ZipFile(wheel) as zf:
        zf.extractall(target)
    code = (
        "import visionrag, visionrag.server.settings, visionrag.search.history; "
        "from visionrag import VisionRAG; print(visionrag.__file__); print(VisionRAG.__module__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,  # outside the repository
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    file, module = out.stdout.split()
    assert Path(file).is_relative_to(target)
    assert module == "visionrag.clients.client"


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append(node.module)
    return found


def test_nothing_imports_the_old_top_level_names_and_layers_hold() -> None:
    for folder in PACKAGE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            for name in _imports(path):
                assert name.split(".")[0] not in ("server", "search", "clients"), f"{path}: import {name}"
                if folder == "search":
                    assert not name.startswith("visionrag.server"), f"{path}: search/ imports {name}"
                if folder == "clients":
                    assert not name.startswith(("visionrag.server", "visionrag.search")), f"{path}: {name}"
