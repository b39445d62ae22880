"""Drive a distilserve server with mixed traffic and record its memory (RSS) over time.

The traffic is what grew the server's memory in issue 25: question answering over long contexts
(about 20 KB, several SQuAD dev paragraphs joined), embedding requests of 64 texts, and short
classification requests, from concurrent clients, with an overload burst (many more clients at
once) every few thousand requests. Every request is on loopback; the loop is bounded by
``--requests`` and ``--max-seconds``.

Two ways to run it:

* ``--serve``: start ``python -m distilserve serve`` (the code on ``PYTHONPATH``: run it with
  ``PYTHONPATH=/work/main`` for the base line) on a free port and read its RSS from ``/proc``;
* ``--url`` (with ``--pid`` or ``--rss-command``): a server already running (a container: the
  docker soak test reads the container's memory from its cgroup).

It prints one line per sample (requests sent, RSS in MB, statuses so far) and a JSON summary,
and exits 1 when a request got a 5xx other than the deadline's 504, or a connection error, or
when RSS kept rising after warm-up (``rss_rising``: the last quarter's lowest sample more than
``--rise-mb`` above the lowest of the quarter after warm-up).

    PYTHONPATH=$PWD .venv/bin/python scripts/memory_soak.py --serve --requests 20000
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

LOOPBACK = "127.0.0.1"
LONG_CONTEXT_CHARS = 20_000
EMBED_BATCH = 64


def data_dir() -> Path:
    configured = os.environ.get("DISTILSERVE_DATA_DIR")
    if configured:
        return Path(configured)
    # Beside the repository (a checkout), or beside the folder of worktrees (a git worktree).
    repo = Path(__file__).resolve().parents[1]
    candidates = [repo.parent / "shared" / "data", repo.parent.parent / "shared" / "data"]
    return next((path for path in candidates if path.is_dir()), candidates[0])


def synthetic_texts(seed: int = 0) -> tuple[list[str], list[tuple[str, str]]]:
    """Made-up sentences and contexts of the same sizes, where the shared data sets are absent
    (a CI runner): memory depends on the shapes, not on what the words mean."""
    rng = random.Random(seed)
    words = [
        f"{rng.choice('bcdfghklmnprstvw')}{rng.choice('aeiou')}{rng.choice('nrst')}" for _ in range(2000)
    ]

    def sentence(low: int, high: int) -> str:
        return " ".join(rng.choice(words) for _ in range(rng.randint(low, high))) + "."

    sentences = [sentence(4, 40) for _ in range(1000)]
    pairs = []
    for _ in range(50):
        context = ""
        while len(context) < LONG_CONTEXT_CHARS:
            context += sentence(8, 30) + " "
        pairs.append((sentence(4, 12).rstrip(".") + "?", context))
    return sentences, pairs


def load_texts() -> tuple[list[str], list[tuple[str, str]]]:
    """Sentences (SST-2 dev) and (question, ~20 KB context) pairs (SQuAD dev paragraphs joined);
    made-up ones of the same sizes when the data sets are not here."""
    folder = data_dir()
    if not (folder / "sst2_dev.tsv").is_file() or not (folder / "squad_v1.1_dev.json").is_file():
        print(f"no data sets in {folder}: synthetic texts of the same sizes", file=sys.stderr)
        return synthetic_texts()
    sentences = [
        line.split("\t")[0]
        for line in (folder / "sst2_dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
        if line
    ]
    squad = json.loads((folder / "squad_v1.1_dev.json").read_text(encoding="utf-8"))
    paragraphs = [p for article in squad["data"] for p in article["paragraphs"]]
    pairs: list[tuple[str, str]] = []
    for start in range(0, len(paragraphs), 7):
        chunk = paragraphs[start : start + 30]
        context = ""
        for paragraph in chunk:
            if len(context) >= LONG_CONTEXT_CHARS:
                break
            context += paragraph["context"] + "\n"
        pairs.append((chunk[0]["qas"][0]["question"], context[: LONG_CONTEXT_CHARS + 2000]))
    return sentences, pairs


@dataclass
class Traffic:
    sentences: list[str]
    pairs: list[tuple[str, str]]
    qa_share: float = 0.1
    embed_share: float = 0.2

    def request(self, rng: random.Random) -> tuple[str, bytes]:
        draw = rng.random()
        if draw < self.qa_share:
            question, context = rng.choice(self.pairs)
            body: dict[str, Any] = {"inputs": {"question": question, "context": context}}
            return "/v1/answer", json.dumps(body).encode()
        if draw < self.qa_share + self.embed_share:
            texts = rng.sample(self.sentences, EMBED_BATCH)
            return "/v1/embeddings", json.dumps({"input": texts}).encode()
        texts = rng.sample(self.sentences, rng.randint(1, 8))
        return "/v1/classify", json.dumps({"input": texts}).encode()


@dataclass
class Results:
    statuses: Counter[int] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)
    sent: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, status: int | None, error: str | None = None) -> None:
        with self.lock:
            self.sent += 1
            if status is not None:
                self.statuses[status] += 1
            if error is not None:
                self.errors[error] += 1


def client(
    host: str,
    port: int,
    traffic: Traffic,
    results: Results,
    budget: Callable[[], bool],
    seed: int,
    headers: dict[str, str],
    socket_timeout_s: float,
) -> None:
    rng = random.Random(seed)
    connection = http.client.HTTPConnection(host, port, timeout=socket_timeout_s)
    while budget():
        path, body = traffic.request(rng)
        try:
            connection.request(
                "POST", path, body=body, headers={"Content-Type": "application/json", **headers}
            )
            response = connection.getresponse()
            response.read()
            results.record(response.status)
            if response.getheader("Connection", "").lower() == "close":
                connection.close()
        except (OSError, http.client.HTTPException) as exc:
            results.record(None, type(exc).__name__)
            connection.close()
    connection.close()


def proc_rss_mb(pid: int, field: str = "VmRSS") -> float:
    """A process's resident memory now (VmRSS), or its peak so far (VmHWM), in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        return int(probe.getsockname()[1])


def wait_ready(host: str, port: int, timeout_s: float, process: subprocess.Popen[bytes] | None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode} before it was ready")
        try:
            connection = http.client.HTTPConnection(host, port, timeout=2)
            connection.request("GET", "/health/ready")
            if connection.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise SystemExit("server not ready in time")


def rising(samples: Sequence[float], rise_mb: float) -> bool:
    """RSS still rising: the last quarter's lowest sample above the second quarter's lowest by
    more than rise_mb (the first quarter is warm-up: the arena and caches reach their working size).

    Why the lowest, not the median: the server keeps its batch memory while busy and gives it back
    when a model is idle, so RSS swings between two levels with the traffic's phase (322 and 440 MB
    in the docker soak), and five samples' median lands on either. What a leak raises is the floor
    the swings come back to."""
    if len(samples) < 8:
        return False
    quarter = len(samples) // 4
    settled = min(samples[quarter : 2 * quarter])
    last = min(samples[-quarter:])
    return last - settled > rise_mb


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", action="store_true", help="start `python -m distilserve serve` here")
    parser.add_argument("--serve-arg", action="append", default=[], help="extra flag for serve (repeat)")
    parser.add_argument("--url", default=None, help="http://127.0.0.1:PORT of a running server")
    parser.add_argument("--pid", type=int, default=None, help="the running server's pid (RSS from /proc)")
    parser.add_argument("--rss-command", default=None, help="a shell command printing the RSS in bytes")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--max-seconds", type=float, default=3600)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--burst-clients", type=int, default=64, help="clients of each overload burst")
    parser.add_argument("--burst-every", type=int, default=5000, help="requests between bursts (0: none)")
    parser.add_argument("--qa-share", type=float, default=0.1)
    parser.add_argument("--embed-share", type=float, default=0.2)
    parser.add_argument("--samples", type=int, default=40, help="RSS samples over the run")
    parser.add_argument("--rise-mb", type=float, default=50.0)
    parser.add_argument(
        "--request-timeout-s",
        type=float,
        default=None,
        help="each request's deadline (X-Request-Timeout; default: the server's): a long one keeps a "
        "burst's requests queued, the worst case for memory, instead of answered 504 on a slow CPU",
    )
    parser.add_argument("--max-rss-mb", type=float, default=None, help="fail above this RSS")
    parser.add_argument("--json", type=Path, default=None, help="write the summary here")
    args = parser.parse_args(argv)

    process: subprocess.Popen[bytes] | None = None
    curve: list[tuple[int, float, float]] = []
    results = Results()
    ready_rss = float("nan")
    if args.serve:
        port = free_port()
        host = LOOPBACK
        command = [sys.executable, "-m", "distilserve", "serve", "--port", str(port), *args.serve_arg]
        log = open(Path(os.environ.get("TMPDIR", "/tmp")) / f"memory-soak-{port}.log", "wb")  # noqa: SIM115
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        pid: int | None = process.pid
    else:
        if not args.url:
            parser.error("give --serve or --url")
        host, _, port_text = args.url.removeprefix("http://").rstrip("/").partition(":")
        port = int(port_text or 80)
        pid = args.pid

    def read_peak() -> float:
        return float("nan") if pid is None else proc_rss_mb(pid, "VmHWM")

    def read_rss() -> float:
        if args.rss_command:
            output = subprocess.run(args.rss_command, shell=True, capture_output=True, text=True, check=True)
            return int(output.stdout.strip()) / 2**20
        if pid is None:
            return float("nan")
        return proc_rss_mb(pid)

    try:
        wait_ready(host, port, 300, process)
        sentences, pairs = load_texts()
        traffic = Traffic(sentences, pairs, args.qa_share, args.embed_share)
        headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
        if args.request_timeout_s is not None:
            headers["X-Request-Timeout"] = str(args.request_timeout_s)
        # The client waits past the server's deadline, so that the server's answer (a 504 at worst)
        # is what is recorded, never the client giving up first.
        socket_timeout_s = max(120.0, (args.request_timeout_s or 0.0) + 30.0)
        started = time.monotonic()
        deadline = started + args.max_seconds
        ready_rss = read_rss()

        def until(limit: int) -> Callable[[], bool]:
            return lambda: results.sent < limit and time.monotonic() < deadline

        step = max(args.requests // args.samples, 1)
        sent_target = 0
        seed = 0
        while sent_target < args.requests and time.monotonic() < deadline:
            sent_target = min(sent_target + step, args.requests)
            burst = args.burst_every and (sent_target // args.burst_every) != (
                (sent_target - step) // args.burst_every
            )
            clients = args.burst_clients if burst else args.clients
            threads = []
            for _ in range(clients):
                seed += 1
                thread = threading.Thread(
                    target=client,
                    args=(host, port, traffic, results, until(sent_target), seed, headers, socket_timeout_s),
                    daemon=True,
                )
                thread.start()
                threads.append(thread)
            for thread in threads:
                thread.join()
            rss = read_rss()
            peak = read_peak()
            curve.append((results.sent, round(time.monotonic() - started, 1), round(rss, 1)))
            server_errors = sum(count for status, count in results.statuses.items() if status >= 500)
            print(
                f"requests={results.sent:6d} t={curve[-1][1]:7.1f}s rss_mb={rss:8.1f} peak_mb={peak:8.1f} "
                f"{'burst ' if burst else ''}statuses={dict(sorted(results.statuses.items()))} "
                f"errors={dict(results.errors)} 5xx={server_errors}",
                flush=True,
            )
            if process is not None and process.poll() is not None:
                break
    finally:
        exit_code = None
        read_peak_at_end = read_peak() if process is None or process.poll() is None else float("nan")
        if process is not None:
            exit_code = process.poll()
            if exit_code is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()

    samples = [rss for _, _, rss in curve]
    # 504 is the server's deadline answer: on a slow CPU a burst outlasts some requests' deadlines.
    # That depends on the machine's speed, which a memory soak does not judge; any other 5xx fails.
    server_errors = sum(
        count for status, count in results.statuses.items() if status >= 500 and status != 504
    )
    summary = {
        "requests": results.sent,
        "seconds": curve[-1][1] if curve else 0.0,
        "ready_rss_mb": round(ready_rss, 1),
        "max_rss_mb": max(samples, default=float("nan")),
        "peak_rss_mb": read_peak_at_end,
        "final_rss_mb": samples[-1] if samples else float("nan"),
        "rss_rising": rising(samples, args.rise_mb),
        "statuses": dict(results.statuses),
        "deadline_exceeded": results.statuses.get(504, 0),
        "connection_errors": dict(results.errors),
        "server_exited": exit_code,
        "curve": curve,
    }
    print(json.dumps({key: value for key, value in summary.items() if key != "curve"}))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=1))
    failed = (
        server_errors > 0
        or bool(results.errors)
        or bool(summary["rss_rising"])
        or exit_code is not None
        or (args.max_rss_mb is not None and summary["max_rss_mb"] > args.max_rss_mb)
    )
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
