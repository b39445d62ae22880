"""``--workers N``: N server processes accept on one listening socket.

Each worker is a whole server (its own event loop, models, batchers and ONNX Runtime threads),
forked from the parent after the socket is bound, so the kernel spreads connections over them.
On a few cores this runs N event loops and N tokenizer lanes side by side instead of one; each
worker gets a share of the cores for ONNX Runtime (``--intra-op-threads`` 0 becomes cores / N).

The parent only supervises: it forwards SIGTERM and SIGINT to the workers (each drains and shuts
down as a single server does), and if one worker dies on its own it stops the others and exits
non-zero, so that the process manager restarts the whole server. Metrics go through
prometheus_client's multiprocess mode (see ``distilserve.server.metrics``): the parent gives the workers a
fresh ``PROMETHEUS_MULTIPROC_DIR`` (unless one is set) and removes it at the end.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import tempfile
from collections.abc import Callable
from types import FrameType

from prometheus_client import multiprocess, values

from distilserve.server.metrics import MULTIPROCESS_DIR_VARIABLE
from distilserve.server.settings import ServerSettings

logger = logging.getLogger(__name__)

# Connections the kernel queues per listening socket before accept (uvicorn's default).
BACKLOG = 2048


def bind_socket(host: str, port: int) -> socket.socket:
    """The listening socket every worker accepts on (inherited across fork)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host.strip("[]"), port))
    sock.listen(BACKLOG)
    sock.set_inheritable(True)
    return sock


def enter_multiprocess_metrics(directory: str) -> None:
    """Make this process's metrics file-backed in ``directory`` (prometheus_client picks its
    value class when it is imported, before the variable was set, so it is reset here)."""
    os.environ[MULTIPROCESS_DIR_VARIABLE] = directory
    values.ValueClass = values.MultiProcessValue()


class WorkerSupervisor:
    """Forks the workers, forwards signals, and reaps them."""

    def __init__(self, settings: ServerSettings, serve: Callable[[socket.socket], int]) -> None:
        self.settings = settings
        self.serve = serve
        self.workers: set[int] = set()
        self.stopping = False
        self.forwarded: set[int] = set()

    def run(self) -> int:
        own_dir = MULTIPROCESS_DIR_VARIABLE not in os.environ
        directory = (
            tempfile.mkdtemp(prefix="distilserve-metrics-")
            if own_dir
            else os.environ[MULTIPROCESS_DIR_VARIABLE]
        )
        sock = bind_socket(self.settings.host, self.settings.port)
        logger.info(
            "starting workers",
            extra={"workers": self.settings.workers, "port": sock.getsockname()[1], "metrics_dir": directory},
        )
        previous = {sig: signal.signal(sig, self._forward) for sig in (signal.SIGTERM, signal.SIGINT)}
        try:
            for index in range(self.settings.workers):
                self._fork(index, sock, directory)
            return self._reap(directory)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            sock.close()
            if own_dir:
                shutil.rmtree(directory, ignore_errors=True)

    def _fork(self, index: int, sock: socket.socket, directory: str) -> None:
        pid = os.fork()
        if pid == 0:  # the worker
            status = 1
            try:
                for sig in (signal.SIGTERM, signal.SIGINT):
                    signal.signal(sig, signal.SIG_DFL)  # uvicorn installs its own
                enter_multiprocess_metrics(directory)
                status = self.serve(sock)
            except BaseException:
                logger.exception("worker failed", extra={"worker": index})
            finally:
                logging.shutdown()
                os._exit(status)
        self.workers.add(pid)

    def _forward(self, sig: int, frame: FrameType | None) -> None:
        self.stopping = True
        self.forwarded.add(sig)
        for pid in self.workers:
            with contextlib.suppress(ProcessLookupError):  # already gone: reaped next
                os.kill(pid, sig)

    def _reap(self, directory: str) -> int:
        status = 0
        while self.workers:
            pid, wait_status = os.wait()
            if pid not in self.workers:
                continue
            self.workers.discard(pid)
            multiprocess.mark_process_dead(pid, directory)
            code = os.waitstatus_to_exitcode(wait_status)
            if not self.stopping:
                # One worker gone on its own: stop the rest, so the manager restarts the whole server.
                logger.error("worker exited; stopping the others", extra={"pid": pid, "status": code})
                self._forward(signal.SIGTERM, None)
                status = 1
            elif code != 0 and -code not in self.forwarded:
                # uvicorn re-raises the signal it stopped on once it has shut down: a worker that
                # ends by the signal it was sent has stopped cleanly.
                status = 1
        return status
