"""Servers under test, started as subprocesses on free loopback ports, one at a time.

Each server gets its own process (as in production), its output goes to a log file the report
names, and it is stopped (SIGTERM, then SIGKILL) before the next one starts, so that no idle
server's threads share the two cores with the one being measured.
"""

from __future__ import annotations

import http.client
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

logger = logging.getLogger(__name__)

LOOPBACK = "127.0.0.1"


class ServerStartError(RuntimeError):
    """The server exited or did not report ready in time; the message ends with its log."""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        port: int = probe.getsockname()[1]
        return port


def http_get_status(host: str, port: int, path: str, timeout_s: float = 2.0) -> int | None:
    """The status of ``GET path``, or None when nothing answers."""
    connection = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        connection.request("GET", path)
        return connection.getresponse().status
    except OSError:
        return None
    finally:
        connection.close()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


class ManagedServer:
    """A server subprocess: ``with ManagedServer(...) as server: ... server.url ...``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        port: int,
        ready_path: str,
        log_path: Path,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
        start_timeout_s: float = 300.0,
    ) -> None:
        self.name = name
        self.argv = list(argv)
        self.port = port
        self.ready_path = ready_path
        self.log_path = log_path
        self.env = dict(os.environ if env is None else env)
        self.cwd = cwd
        self.start_timeout_s = start_timeout_s
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                cwd=self.cwd,
                # Its own process group, so that stopping it also stops any workers it forks.
                start_new_session=True,
            )
        logger.info("starting %s (pid %d): %s", self.name, self.process.pid, " ".join(self.argv))
        deadline = time.monotonic() + self.start_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerStartError(
                    f"{self.name} exited with status {self.process.returncode} before it was ready; "
                    f"log {self.log_path}:\n{_tail(self.log_path)}"
                )
            if http_get_status(LOOPBACK, self.port, self.ready_path) == 200:
                return
            time.sleep(0.25)
        self.stop()
        raise ServerStartError(
            f"{self.name} not ready after {self.start_timeout_s:.0f}s; log {self.log_path}:\n"
            f"{_tail(self.log_path)}"
        )

    def stop(self) -> None:
        process = self.process
        if process is None or process.poll() is not None:
            return
        # Signal our own child's process group only (it was started in a new session).
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=10)

    def __enter__(self) -> ManagedServer:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()


def distilserve_server(
    models: Mapping[str, Path],
    log_dir: Path,
    extra_args: Sequence[str] = (),
    *,
    log_name: str = "distilserve.log",
) -> ManagedServer:
    """``distilserve serve`` for these bundles, exactly as a user starts it (its defaults)."""
    port = free_port()
    argv = [sys.executable, "-m", "distilserve", "serve", "--host", LOOPBACK, "--port", str(port)]
    for name, bundle in models.items():
        argv += ["--model", f"{name}={bundle}"]
    argv += ["--no-build-default", "--log-format", "text", "--log-level", "warning", *extra_args]
    return ManagedServer(
        "distilserve", argv, port=port, ready_path="/health/ready", log_path=log_dir / log_name
    )
