#!/usr/bin/env python3
"""Footprint of coherence-sidecar beside the Prometheus agent, on the same real target.

Scenario A (side by side): Debian's prometheus-node-exporter, the series of a fixed set of
metric families (about 200), scraped at 1 Hz for BENCH_SECONDS (default 300) by both the
sidecar (windows 1m and 5m, 10 s epochs, records signed and delivered over mTLS to a real
verifier) and `prometheus --enable-feature=agent` (same interval, same series kept by
metric_relabel_configs).

Scenario I (idle): the same exporter, three series (load, available memory, one CPU counter),
60 s: the sidecar at rest with next to nothing in its windows.

Scenario B (full windows, 1,000 samples/s): a local exporter serving 1,000 gauges, scraped at
1 Hz (1,000 samples/s) with a 2-minute window, so once warm the window holds 120,000 samples;
both processes again.

Measured from /proc: RSS (VmRSS) sampled every second after a warm-up, reported as mean and
max; CPU as (utime + stime) over the measured interval divided by wall time, in millicores.
Only the measured processes are counted (not the exporter, the verifier or this script).

The sidecar is the binary its image ships: `cargo build --profile sidecar` (size-optimised,
fat LTO, stripped).

Usage: bench/sidecar.py --bin-dir target/release --sidecar-bin target/sidecar/coherence-sidecar
       [--seconds 300] [--only A|B]
"""

import argparse
import http.server
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

CLK = os.sysconf("SC_CLK_TCK")
IDLE = r'node_load1|node_memory_MemAvailable_bytes|node_cpu_seconds_total'
FAMILIES = r"node_(cpu|memory|load|vmstat|netstat|sockstat|filesystem|disk|network_(receive|transmit)_bytes)_.*"
TARGETS = {"idle_rss_mb": 8.0, "full_rss_mb": 12.0, "mcpu_1k": 10.0, "rss_ratio": 1 / 3}


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, limit=30.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return r.read()
        except Exception:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {limit}s")


def proc_cpu_ticks(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # Fields after the command: state is [0]; utime is field 14 overall -> index 11 here.
    return int(fields[11]) + int(fields[12])


def proc_rss_kb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


class Meter:
    """Samples RSS every second and CPU over the measured interval of several processes."""

    def __init__(self, procs):
        self.procs = procs  # name -> Popen
        self.rss = {n: [] for n in procs}
        self.t0 = None
        self.ticks0 = {}

    def start(self):
        self.t0 = time.time()
        self.ticks0 = {n: proc_cpu_ticks(p.pid) for n, p in self.procs.items()}

    def sample(self):
        for n, p in self.procs.items():
            if p.poll() is not None:
                raise SystemExit(f"{n} exited with {p.returncode}")
            self.rss[n].append(proc_rss_kb(p.pid) / 1024.0)

    def finish(self):
        wall = time.time() - self.t0
        out = {}
        for n, p in self.procs.items():
            ticks = proc_cpu_ticks(p.pid) - self.ticks0[n]
            r = self.rss[n]
            out[n] = {
                "rss_mb_mean": sum(r) / len(r),
                "rss_mb_max": max(r),
                "rss_mb_last": r[-1],
                "mcpu": ticks / CLK / wall * 1000.0,
                "seconds": wall,
            }
        return out


class Gauges(http.server.BaseHTTPRequestHandler):
    """1,000 gauges doing a random walk, in the Prometheus text format."""

    values = [50.0] * 1000

    def do_GET(self):
        lines = ["# TYPE bench_gauge gauge"]
        for i in range(len(self.values)):
            self.values[i] += random.uniform(-1, 1)
            lines.append(f'bench_gauge{{i="{i}"}} {self.values[i]:.4f}')
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def sidecar_config(work, target, metrics_regex, windows, verifier_port, api_port):
    certs = os.path.join(work, "certs")
    return f"""identity: {{namespace: bench, workload: node, pod: node-0}}
sources:
  - name: target
    type: prometheus
    url: {target}
    interval: 1s
    timeout: 800ms
    metrics: ["re:{metrics_regex}"]
    maxSeries: 5000
epoch: 10s
windows: {windows}
verifier:
  endpoint: https://127.0.0.1:{verifier_port}
  ca: {certs}/ca.crt
  cert: {certs}/client.crt
  key: {certs}/client.key
outbox:
  dir: {work}/outbox-{api_port}
api:
  listen: 127.0.0.1:{api_port}
"""


def agent_config(target_hostport, metrics_regex):
    return f"""global:
  scrape_interval: 1s
  scrape_timeout: 800ms
scrape_configs:
  - job_name: bench
    static_configs:
      - targets: ["{target_hostport}"]
    metric_relabel_configs:
      - source_labels: [__name__]
        regex: "{metrics_regex}"
        action: keep
"""


def run_scenario(name, args, work, target_url, regex, windows, warmup, seconds, verifier_port):
    api = free_port()
    cfg_path = os.path.join(work, f"sidecar-{name}.yaml")
    with open(cfg_path, "w") as f:
        f.write(sidecar_config(work, target_url, regex, windows, verifier_port, api))
    hostport = target_url.split("//", 1)[1].split("/", 1)[0]
    agent_path = os.path.join(work, f"agent-{name}.yml")
    with open(agent_path, "w") as f:
        f.write(agent_config(hostport, regex))
    env = dict(os.environ, PCS_HMAC_KEY="bench-key", COHERENCE_LOG_FORMAT="json", RUST_LOG="warn")
    sidecar = subprocess.Popen(
        [args.sidecar_bin, "run", "--config", cfg_path],
        env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"sidecar-{name}.log"), "w"))
    agent_port = free_port()
    agent = subprocess.Popen(
        ["prometheus", "--enable-feature=agent", f"--config.file={agent_path}",
         f"--storage.agent.path={os.path.join(work, 'agent-' + name)}",
         f"--web.listen-address=127.0.0.1:{agent_port}", "--log.level=warn"],
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"agent-{name}.log"), "w"))
    procs = {"coherence-sidecar": sidecar, "prometheus-agent": agent}
    try:
        wait_http(f"http://127.0.0.1:{api}/healthz")
        wait_http(f"http://127.0.0.1:{agent_port}/-/ready")
        print(f"[{name}] warming up {warmup}s ...", flush=True)
        time.sleep(warmup)
        meter = Meter(procs)
        meter.start()
        end = time.time() + seconds
        while time.time() < end:
            meter.sample()
            time.sleep(1.0)
            left = int(end - time.time())
            if left % 30 == 0:
                print(f"[{name}] {left}s left", flush=True)
        result = meter.finish()
        status = json.loads(wait_http(f"http://127.0.0.1:{api}/status"))
        result["coherence-sidecar"]["signals"] = status["signals"]
        result["coherence-sidecar"]["samples_held"] = status["samplesHeld"]
        result["coherence-sidecar"]["delivered"] = status["delivery"]["sent_ok"]
        result["coherence-sidecar"]["outbox_pending"] = status["outbox"]["pending"]
        samples_per_s = sum(s["samples"] for s in status["sources"].values()) / max(1, status["uptimeSec"])
        result["coherence-sidecar"]["samples_per_s"] = samples_per_s
        return result
    finally:
        for p in procs.values():
            p.send_signal(signal.SIGTERM)
        for p in procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin-dir", default="target/release",
                    help="where coherence and coherence-verifier are")
    ap.add_argument("--sidecar-bin", default="target/sidecar/coherence-sidecar",
                    help="the sidecar built as its image ships it (cargo build --profile sidecar)")
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("BENCH_SECONDS", "300")))
    ap.add_argument("--only", choices=["I", "A", "B"])
    args = ap.parse_args()
    for tool in ["prometheus", "prometheus-node-exporter"]:
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is missing: apt-get install prometheus prometheus-node-exporter")
    work = tempfile.mkdtemp(prefix="coherence-bench-sidecar-")
    subprocess.run([os.path.join(args.bin_dir, "coherence"), "certs", "gen", "--out",
                    os.path.join(work, "certs")], check=True, stdout=subprocess.DEVNULL)
    vport, aport = free_port(), free_port()
    verifier = subprocess.Popen(
        [os.path.join(args.bin_dir, "coherence-verifier"), "serve", "--listen", f"127.0.0.1:{vport}",
         "--admin-listen", f"127.0.0.1:{aport}", "--wal-dir", os.path.join(work, "wal")],
        env=dict(os.environ, PCS_HMAC_KEYS="bench-key", RUST_LOG="warn",
                 COHERENCE_TLS_CERT=os.path.join(work, "certs/verifier.crt"),
                 COHERENCE_TLS_KEY=os.path.join(work, "certs/verifier.key"),
                 COHERENCE_TLS_CA=os.path.join(work, "certs/ca.crt")),
        stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "verifier.log"), "w"))
    ne_port = free_port()
    exporter = subprocess.Popen(["prometheus-node-exporter", f"--web.listen-address=127.0.0.1:{ne_port}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    gauges_port = free_port()
    gauges = http.server.ThreadingHTTPServer(("127.0.0.1", gauges_port), Gauges)
    threading.Thread(target=gauges.serve_forever, daemon=True).start()
    results = {}
    try:
        wait_http(f"http://127.0.0.1:{aport}/readyz")
        text = wait_http(f"http://127.0.0.1:{ne_port}/metrics").decode()
        names = [l.split("{")[0].split(" ")[0] for l in text.splitlines() if l and not l.startswith("#")]
        kept = sum(1 for n in names if re.fullmatch(FAMILIES, n))
        print(f"node exporter: {len(names)} series, {kept} kept by {FAMILIES}", flush=True)
        if args.only in (None, "I"):
            results["I"] = run_scenario("I", args, work, f"http://127.0.0.1:{ne_port}/metrics",
                                        IDLE, "[1m, 5m]", 20, 60, vport)
        if args.only in (None, "A"):
            results["A"] = run_scenario("A", args, work, f"http://127.0.0.1:{ne_port}/metrics",
                                        FAMILIES, "[1m, 5m]", 20, args.seconds, vport)
            results["A"]["series"] = kept
        if args.only in (None, "B"):
            # 2-minute window at 1,000 samples/s: full after 120 s of warm-up.
            results["B"] = run_scenario("B", args, work, f"http://127.0.0.1:{gauges_port}/metrics",
                                        "bench_gauge", "[2m]", 130, max(60, args.seconds // 2), vport)
    finally:
        exporter.terminate()
        verifier.terminate()
        gauges.shutdown()
    print()
    print("| scenario | process | RSS mean MB | RSS max MB | CPU mcores | notes |")
    print("|---|---|---|---|---|---|")
    for sc, r in results.items():
        for proc in ["coherence-sidecar", "prometheus-agent"]:
            m = r[proc]
            notes = ""
            if proc == "coherence-sidecar":
                notes = (f"{m['signals']} signals, {m['samples_held']} samples in windows, "
                         f"{m['samples_per_s']:.0f} samples/s, {m['delivered']} records delivered, "
                         f"{m['outbox_pending']} pending")
            print(f"| {sc} | {proc} | {m['rss_mb_mean']:.2f} | {m['rss_mb_max']:.2f} | {m['mcpu']:.2f} | {notes} |")
    print()
    if "I" in results:
        i = results["I"]["coherence-sidecar"]
        print(f"I: sidecar RSS max {i['rss_mb_max']:.2f} MB idle, {i['signals']} signals "
              f"(target <= {TARGETS['idle_rss_mb']} MB)")
    if "A" in results:
        a = results["A"]
        ratio = a["coherence-sidecar"]["rss_mb_max"] / a["prometheus-agent"]["rss_mb_max"]
        print(f"A: sidecar RSS max {a['coherence-sidecar']['rss_mb_max']:.2f} MB "
              f"(target <= {TARGETS['idle_rss_mb']} MB); RSS ratio sidecar/agent {ratio:.3f} "
              f"(target <= {TARGETS['rss_ratio']:.3f}); {a['series']} series at 1 Hz, {a['coherence-sidecar']['seconds']:.0f} s")
    if "B" in results:
        b = results["B"]["coherence-sidecar"]
        print(f"B: sidecar RSS max {b['rss_mb_max']:.2f} MB with {b['samples_held']} samples held "
              f"(target <= {TARGETS['full_rss_mb']} MB); CPU {b['mcpu']:.2f} mcores at {b['samples_per_s']:.0f} samples/s "
              f"(target <= {TARGETS['mcpu_1k']})")
    with open(os.path.join(work, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    print(f"raw figures: {os.path.join(work, 'results.json')}")


if __name__ == "__main__":
    sys.exit(main())
