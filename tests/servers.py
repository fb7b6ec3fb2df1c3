"""Start and stop server subprocesses for integration tests (Dagster, Postgres, S3, MLflow...).

A server is started in a new session (its own process group) with the default handlers
of SIGTERM/SIGINT/SIGHUP restored and no signal blocked, whatever the test process
inherited (background processes on this machine ignore SIGTERM, and children would inherit
that). Its stdout and stderr go to a log file, never to a pipe that could fill up. Teardown
sends SIGKILL to the whole process group (the server and every worker it spawned, as long
as they did not start sessions of their own) and reaps the leader.

    port = free_port()
    with running_server(["some-server", "--port", str(port)], log_path=tmp_path / "srv.log",
                        env=env, ready_url=f"http://127.0.0.1:{port}/health") as server:
        ...  # server.tail() shows the end of its log, e.g. in an assertion message
        server.restart()  # kill it and start the same command again (same ports, same data)

Only the standard library: every test can import this module.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

LOCALHOST = "127.0.0.1"
_RESET_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT, signal.SIGPIPE)


# tests/daemon_tick/sitecustomize.py: the backfill daemon's tick for the tests (daemon_env)
DAEMON_TICK = Path(__file__).resolve().parent / "daemon_tick"


def daemon_env(env: Mapping[str, str], interval: float = 2.0) -> dict[str, str]:
    """``env`` for a process that is (or starts) a Dagster daemon, whose backfill daemon then
    ticks every ``interval`` seconds instead of Dagster's fixed 30 (daemon_tick/)."""
    out = dict(env)
    out["PYTHONPATH"] = os.pathsep.join(p for p in (str(DAEMON_TICK), out.get("PYTHONPATH")) if p)
    out["QUANT_TEST_DAEMON_INTERVAL"] = str(interval)
    return out


class ServerError(RuntimeError):
    """A server did not start, exited early, or did not answer in time."""


def free_port(host: str = LOCALHOST) -> int:
    """A TCP port that is free right now on ``host`` (bind to port 0, read it, release it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def _restore_default_signals() -> None:  # runs in the child between fork and exec
    for sig in _RESET_SIGNALS:
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_SETMASK, set())


@dataclass
class ServerProcess:
    """A started server: the leader of its own process group."""

    args: list[str]
    process: subprocess.Popen
    log_path: Path
    _log_file: object = field(default=None, repr=False)
    env: dict[str, str] | None = field(default=None, repr=False)
    cwd: str | os.PathLike[str] | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def pgid(self) -> int:
        # start_new_session=True: the leader's pid is the session and process group id
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def tail(self, chars: int = 6000) -> str:
        """The end of the server's log (stdout and stderr together)."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no log at {self.log_path}: {exc}>"
        return text[-chars:]

    def check_alive(self) -> None:
        """Raise ServerError (with the log's tail) if the server has exited."""
        code = self.process.poll()
        if code is not None:
            raise ServerError(
                f"{self.args[0]} exited with code {code}; log {self.log_path}:\n{self.tail()}"
            )

    def stop(self, timeout: float = 30.0) -> None:
        """SIGKILL the whole process group and reap the leader. Safe to call twice."""
        stop_process_group(self.process, timeout=timeout)
        if self._log_file is not None:
            with contextlib.suppress(OSError):
                self._log_file.close()  # type: ignore[attr-defined]
            self._log_file = None

    def restart(self, timeout: float = 30.0) -> None:
        """Start the same command again (same environment and working directory, its output
        appended to the same log), after killing the process group if it still runs: the
        server comes back on the same ports and data, as after a crash or a redeploy. The
        caller waits for it to answer (``wait_for_port`` / ``wait_for_http``)."""
        self.stop(timeout=timeout)
        self.process, self._log_file = _popen(self.args, self.log_path, self.env, self.cwd, "ab")


def start_server(
    args: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
) -> ServerProcess:
    """Start ``args`` in a new session with default signal handlers; output to ``log_path``."""
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = dict(env) if env is not None else None
    process, log_file = _popen(list(args), log_path, env, cwd, "wb")
    return ServerProcess(list(args), process, log_path, log_file, env=env, cwd=cwd)


def _popen(
    args: list[str],
    log_path: Path,
    env: dict[str, str] | None,
    cwd: str | os.PathLike[str] | None,
    mode: str,
) -> tuple[subprocess.Popen, object]:
    log_file = open(log_path, mode)  # closed by ServerProcess.stop
    try:
        process = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_restore_default_signals,
            close_fds=True,
        )
    except BaseException:
        log_file.close()
        raise
    return process, log_file


def stop_process_group(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGKILL every process of ``process``'s group (it must lead its own session), reap it,
    and wait (best effort, up to ``timeout``) until the group is empty."""
    pgid = process.pid
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired as exc:  # pragma: no cover - SIGKILL cannot be ignored
        raise ServerError(f"process {pgid} survived SIGKILL for {timeout}s") from exc
    # orphaned members of the group are reaped by init; wait until they are gone
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except ProcessLookupError:
            return
        except PermissionError:
            return
        time.sleep(0.05)


def _wait(
    ready: Callable[[], bool],
    what: str,
    timeout: float,
    server: ServerProcess | None,
    interval: float,
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if server is not None:
            server.check_alive()
        if ready():
            return
        if time.monotonic() >= deadline:
            log = f"; log {server.log_path}:\n{server.tail()}" if server is not None else ""
            raise ServerError(f"{what} did not answer within {timeout:.0f}s{log}")
        time.sleep(interval)


def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """HTTP status of a GET of ``url`` (any status, 4xx/5xx included); None if no answer."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except (urllib.error.URLError, OSError, ValueError):
        return None


def wait_for_port(
    host: str,
    port: int,
    timeout: float = 60.0,
    server: ServerProcess | None = None,
    interval: float = 0.2,
) -> None:
    """Wait until ``host:port`` accepts TCP connections; fail early if ``server`` exits."""
    _wait(lambda: port_open(host, port), f"{host}:{port}", timeout, server, interval)


def wait_for_http(
    url: str,
    timeout: float = 60.0,
    server: ServerProcess | None = None,
    interval: float = 0.5,
    ok: Callable[[int], bool] = lambda status: 200 <= status < 400,
) -> None:
    """Wait until a GET of ``url`` answers with a status that ``ok`` accepts (2xx/3xx by
    default); fail early if ``server`` exits."""

    def ready() -> bool:
        status = http_status(url)
        return status is not None and ok(status)

    _wait(ready, url, timeout, server, interval)


@contextlib.contextmanager
def running_server(
    args: Sequence[str],
    *,
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    ready_port: tuple[str, int] | None = None,
    ready_url: str | None = None,
    ready_ok: Callable[[int], bool] = lambda status: 200 <= status < 400,
    timeout: float = 60.0,
) -> Iterator[ServerProcess]:
    """Start a server, wait until it answers (a TCP port and/or an HTTP URL), yield it, and
    kill its process group on exit, whatever happened (startup failure included)."""
    server = start_server(args, log_path=log_path, env=env, cwd=cwd)
    try:
        if ready_port is not None:
            wait_for_port(ready_port[0], ready_port[1], timeout=timeout, server=server)
        if ready_url is not None:
            wait_for_http(ready_url, timeout=timeout, server=server, ok=ready_ok)
        yield server
    finally:
        server.stop()
