"""Issue 23's three throughput goals in one run, interleaved: c=32 on the SST-2 student through
`distilserve bench --url`, against servers started from two checkouts: BEFORE (a checkout of the
code before the observer, or before a change to tracing) with tracing off and on, and this one
with tracing off, on (100% sampling, to scripts/otlp_sink.py) and down (an endpoint nothing
listens on). Prints each run, the medians and the ratios.

    python scripts/bench_tracing.py BEFORE_CHECKOUT [REPEATS] [DURATION_S]
"""
import json, os, statistics, subprocess, sys, time, urllib.request
WT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = f"{WT}/.venv/bin/python"; BUNDLE = f"{WT}/model-zoo/sst2-minilm-l3-int8"
BEFORE = os.path.abspath(sys.argv[1])
REPEATS = int(sys.argv[2]) if len(sys.argv) > 2 else 3
DURATION = sys.argv[3] if len(sys.argv) > 3 else "8"
DATA = os.environ.get("DISTILSERVE_DATA_DIR", os.path.join(os.path.dirname(WT), "shared", "data"))
OUT = os.path.join(WT, "runs", "bench-tracing"); os.makedirs(OUT, exist_ok=True)
VARIANTS = {
    "before": (BEFORE, []),
    "before_on": (BEFORE, ["--otlp-endpoint", "http://127.0.0.1:14317"]),
    "off": (WT, []),
    "on": (WT, ["--otlp-endpoint", "http://127.0.0.1:14317"]),
    "down": (WT, ["--otlp-endpoint", "http://127.0.0.1:14399"]),
}
def wait_ready(port):
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health/ready", timeout=1) as r:
                if r.status == 200: return
        except Exception: pass
        time.sleep(0.1)
    raise RuntimeError("server never ready")
def find_runs(obj, out):
    if isinstance(obj, dict):
        if "items_per_s" in obj and obj.get("concurrency") == 32: out.append(obj)
        for v in obj.values(): find_runs(v, out)
    elif isinstance(obj, list):
        for v in obj: find_runs(v, out)
sink = subprocess.Popen([PY, f"{WT}/scripts/otlp_sink.py", "14317"], stdout=subprocess.PIPE, text=True)
assert "ready" in sink.stdout.readline()
results = {name: [] for name in VARIANTS}; errors = {name: [] for name in VARIANTS}
try:
    for rep in range(REPEATS):
        for name, (path, args) in VARIANTS.items():
            port = 18080
            env = dict(os.environ, PYTHONPATH=path, OTEL_EXPORTER_OTLP_TIMEOUT="10")
            server = subprocess.Popen([PY, "-m", "distilserve", "serve", "--port", str(port), "--model",
                f"sst2={BUNDLE}", "--log-level", "warning", *args], env=env, cwd=path,
                stdout=subprocess.DEVNULL, stderr=open(f"{OUT}/server-{name}-{rep}.log", "w"))
            try:
                wait_ready(port)
                out = f"{OUT}/{name}-{rep}.json"
                subprocess.run([PY, "-m", "distilserve", "bench", "--url", f"http://127.0.0.1:{port}",
                    "--classify-bundle", BUNDLE, "--workloads", "classify", "--baselines", "none",
                    "--concurrency", "32", "--duration-s", DURATION, "--requests", "100000",
                    "--output", out, "--markdown-output", f"{OUT}/{name}-{rep}.md", "--data-dir", DATA, "--log-level", "warning"],
                    env=dict(os.environ, PYTHONPATH=WT), cwd=WT, check=True, stdout=subprocess.DEVNULL)
                runs = []; find_runs(json.load(open(out)), runs)
                run = runs[0]
                results[name].append(run["items_per_s"]); errors[name].append(run.get("errors"))
                print(name, rep, round(run["items_per_s"], 1), run.get("errors"), flush=True)
            finally:
                server.terminate(); server.wait(30)
finally:
    sink.terminate()
med = {k: statistics.median(v) for k, v in results.items() if v}
print("medians", {k: round(v, 1) for k, v in med.items()})
print("off/before", round(med["off"] / med["before"], 3), "on/off", round(med["on"] / med["off"], 3),
      "down/off", round(med["down"] / med["off"], 3), "on/before_on", round(med["on"] / med["before_on"], 3),
      "before: on/off", round(med["before_on"] / med["before"], 3))
print("errors", errors)
print("load", open("/proc/loadavg").read().strip())
