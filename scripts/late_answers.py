"""Count answers that arrive after their deadline (issue 25): concurrent clients send short
classification requests with ``X-Request-Timeout`` (50 ms by default) to a running server, and
each answer's client-side time is compared with the deadline plus a slack (10 ms).

A 200 arriving later than that is the failure the server must not make (it answers 504 when the
deadline passes before the answer starts); 504s are counted too, with how late they came.
Client-side times include this machine's scheduling of the client threads, so run it where the
cores are not oversubscribed. Loopback only, bounded by ``--requests``.

    PYTHONPATH=$PWD .venv/bin/python scripts/late_answers.py --url http://127.0.0.1:8080
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--url", required=True, help="http://127.0.0.1:PORT")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--requests", type=int, default=50, help="per client")
    parser.add_argument("--timeout-s", type=float, default=0.05)
    parser.add_argument("--slack-s", type=float, default=0.01)
    args = parser.parse_args(argv)
    host, _, port = args.url.removeprefix("http://").rstrip("/").partition(":")
    body = json.dumps({"input": "A gripping, beautifully shot film that runs a little long."}).encode()
    headers = {"Content-Type": "application/json", "X-Request-Timeout": str(args.timeout_s)}
    lock = threading.Lock()
    times: dict[int, list[float]] = {}
    errors: Counter[str] = Counter()

    def client() -> None:
        connection = http.client.HTTPConnection(host, int(port), timeout=30)
        for _ in range(args.requests):
            started = time.perf_counter()
            try:
                connection.request("POST", "/v1/classify", body=body, headers=headers)
                response = connection.getresponse()
                response.read()
            except (OSError, http.client.HTTPException) as exc:
                with lock:
                    errors[type(exc).__name__] += 1
                connection.close()
                continue
            elapsed = time.perf_counter() - started
            with lock:
                times.setdefault(response.status, []).append(elapsed)
        connection.close()

    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    late_by = args.timeout_s + args.slack_s
    summary = {
        "clients": args.clients,
        "deadline_s": args.timeout_s,
        "statuses": {status: len(values) for status, values in sorted(times.items())},
        "late_200s": sum(1 for value in times.get(200, []) if value > late_by),
        "late_200_share": round(
            sum(1 for v in times.get(200, []) if v > late_by) / max(len(times.get(200, [])), 1), 4
        ),
        "worst_200_ms": round(max(times.get(200, [0.0])) * 1000, 1),
        "median_504_ms": round(statistics.median(times[504]) * 1000, 1) if 504 in times else None,
        "errors": dict(errors),
    }
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
