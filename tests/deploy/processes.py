"""Real processes for the deploy tests: ``distilserve serve`` and Prometheus, on loopback."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def http_get(url: str, timeout: float = 5.0, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Status and body; an HTTP error status is returned, not raised."""
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def http_post_json(
    url: str, body: dict[str, Any], timeout: float = 30.0, headers: dict[str, str] | None = None
) -> tuple[int, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json", **(headers or {})},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return int(response.status), json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"null")


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without DISTILSERVE_* variables (the test decides every setting)."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("DISTILSERVE_")}
    env.update(extra)
    return env


class Process:
    """A child process with its output in a log file; stopped with SIGTERM (then SIGKILL)."""

    def __init__(self, argv: Sequence[str], log_path: Path, env: dict[str, str] | None = None) -> None:
        self.argv = list(argv)
        self.log_path = log_path
        self.env = env if env is not None else clean_env()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=self.env
            )

    def log_tail(self, chars: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def wait_until(self, url: str, timeout_s: float, expect_status: int = 200) -> None:
        """Poll ``url`` until it answers ``expect_status``; fail with the log if the process dies."""
        assert self.process is not None
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.argv[0]} exited with {self.process.returncode}:\n{self.log_tail()}"
                )
            try:
                status, _ = http_get(url, timeout=2)
                if status == expect_status:
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"{url} did not answer {expect_status} in {timeout_s}s:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=10)
            return None

    def __enter__(self) -> Process:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def serve_argv(distilserve: Sequence[str], model_args: Sequence[str], port: int) -> list[str]:
    """``distilserve serve`` on 127.0.0.1:port with plain-text logs."""
    argv = [*distilserve, "serve", "--host", "127.0.0.1", "--port", str(port), "--log-format", "text"]
    for model in model_args:
        argv += ["--model", model]
    return argv
