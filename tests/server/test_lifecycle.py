"""The whole server lives and dies as one: a failed API process start stops everything with a non-zero
status, SIGTERM / SIGINT to the main pid leave no process and free the port, and no child outlives a
main process killed outright."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

import pytest
import requests

from tests.conftest import ServerProcess, wait_until


def session_members(sid: int) -> list[int]:
    """Every live (non-zombie) process of the server's session (ServerProcess starts a new one), read from
    /proc: field 3 of /proc/PID/stat is the state, field 6 the session id."""
    out = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == sid:
            continue
        try:
            stat = Path(f"/proc/{name}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[3]) == sid:
            out.append(int(name))
    return out


def port_is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def test_a_failed_api_process_start_stops_the_whole_server(
    tmp_path: Path, server_env: dict[str, str]
) -> None:
    broken = tmp_path / "broken-clip"  # passes preflight (a folder with a model file), fails to load
    broken.mkdir()
    (broken / "model.onnx").write_bytes(b"not an onnx graph")
    server = ServerProcess(tmp_path, {**server_env, "TEXT_MODEL_PATH": str(broken)}).spawn()
    try:
        code = server.proc.wait(90)
    except subprocess.TimeoutExpired:
        server.kill()
        pytest.fail(f"the server did not exit after its API process failed; log:\n{server.log_tail()}")
    assert code != 0
    assert "the API server process exited" in server.log_tail(200)
    wait_until(lambda: not session_members(server.proc.pid), 15, "no process of the server left")
    assert port_is_free(server.port)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_main_pid_stops_everything_and_frees_the_port(
    tmp_path: Path, server_env: dict[str, str], sig: signal.Signals
) -> None:
    server = ServerProcess(tmp_path, server_env).start()
    try:
        assert requests.get(server.url + "/health", timeout=5).status_code == 200
        children = session_members(server.proc.pid)
        assert len(children) >= 3  # API process, model worker, LitServe's manager
        server.proc.send_signal(sig)  # the main pid only, as `kill PID` does
        assert server.proc.wait(45) == 0, server.log_tail()
        wait_until(lambda: not session_members(server.proc.pid), 15, "no process of the server left")
        wait_until(lambda: port_is_free(server.port), 10, "the port to be free")
    finally:
        server.kill()


def test_no_child_outlives_a_main_process_killed_outright(tmp_path: Path, server_env: dict[str, str]) -> None:
    server = ServerProcess(tmp_path, server_env).start()
    try:
        children = session_members(server.proc.pid)
        assert len(children) >= 3
        server.proc.send_signal(signal.SIGKILL)
        server.proc.wait(10)
        wait_until(lambda: not session_members(server.proc.pid), 45, "every child to die with its parent")
        wait_until(lambda: port_is_free(server.port), 10, "the port to be free")
    finally:
        server.kill()
