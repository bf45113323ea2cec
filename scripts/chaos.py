#!/usr/bin/env python3
"""Crash safety of the verifier under load.

Each cycle starts `coherence-verifier serve` on the same WAL directory, runs
`coherence loadgen` against it over mTLS, and kills the verifier with SIGKILL at a random
moment (sometimes before it is even ready, i.e. during WAL replay). At the end a last verifier
is started and the script checks that

  * every pcs_id that was answered 200 or 202 in any cycle is in the dedup store, with the
    status it was answered with (GET /v1/records/{id} over mTLS), and
  * no id was stored first more than once (`coherence-verifier wal audit`, which reads the WAL
    without changing it).

It prints a JSON summary and exits 1 on any violation.

    python3 scripts/chaos.py --cycles 1000                # make chaos
    python3 scripts/chaos.py --cycles 8                   # the short run of make test
    python3 scripts/chaos.py --backend redis --cycles 50  # the real Redis on 127.0.0.1:6379
"""

import argparse
import http.client
import json
import os
import random
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import uuid


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(admin_port, proc, limit=30.0):
    deadline = time.time() + limit
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"verifier exited with {proc.returncode} before it was ready")
        try:
            c = http.client.HTTPConnection("127.0.0.1", admin_port, timeout=1)
            c.request("GET", "/readyz")
            if c.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.02)
    raise SystemExit(f"verifier not ready after {limit}s")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cycles", type=int, default=1000)
    ap.add_argument("--bin-dir", default=os.environ.get("COHERENCE_BIN_DIR", "target/debug"))
    ap.add_argument("--backend", choices=["memory", "redis", "postgres"], default="memory")
    ap.add_argument("--rate", type=int, default=300, help="loadgen requests per second")
    ap.add_argument("--load-seconds", type=float, default=1.0, help="loadgen duration per cycle")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()

    seed = args.seed if args.seed is not None else random.randrange(1 << 32)
    rng = random.Random(seed)
    verifier = os.path.join(args.bin_dir, "coherence-verifier")
    coherence = os.path.join(args.bin_dir, "coherence")
    for b in (verifier, coherence):
        if not os.access(b, os.X_OK):
            raise SystemExit(f"{b}: not built (cargo build --bins)")

    work = tempfile.mkdtemp(prefix="coherence-chaos-")
    certs = os.path.join(work, "certs")
    wal = os.path.join(work, "wal")
    subprocess.run([coherence, "certs", "gen", "--out", certs], check=True, stdout=subprocess.DEVNULL)
    port, admin = free_port(), free_port()
    key = "chaos-" + uuid.uuid4().hex
    env = dict(os.environ)
    env.update({
        "PCS_SIGN_ALG": "hmac",
        "PCS_HMAC_KEY": key,
        "COHERENCE_TLS_CERT": os.path.join(certs, "verifier.crt"),
        "COHERENCE_TLS_KEY": os.path.join(certs, "verifier.key"),
        "COHERENCE_TLS_CA": os.path.join(certs, "ca.crt"),
        "TOKEN_RATE": "0",
        "DEDUP_BACKEND": args.backend,
        "RUST_LOG": "warn",
        # Snapshots and compaction often, so kills also land in the middle of them.
        "COHERENCE_SNAPSHOT_SECONDS": "1",
        "COHERENCE_MAINTENANCE_SECONDS": "1",
        "COHERENCE_WAL_SEGMENT_BYTES": "65536",
    })
    schema = None
    if args.backend == "redis":
        env["REDIS_PREFIX"] = f"coherence-chaos-{uuid.uuid4().hex[:12]}:"
    if args.backend == "postgres":
        schema = f"coh_chaos_{uuid.uuid4().hex[:12]}"
        env["DATABASE_URL"] = env.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/test")
        env["DATABASE_SCHEMA"] = schema
    serve = [verifier, "serve", "--listen", f"127.0.0.1:{port}", "--admin-listen", f"127.0.0.1:{admin}", "--wal-dir", wal]
    log = open(os.path.join(work, "verifier.log"), "ab")

    acked = {}  # pcs_id -> status answered
    kills_before_ready = 0
    started = time.time()
    for cycle in range(args.cycles):
        proc = subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL, stderr=log)
        if rng.random() < 0.1:
            # Kill during startup: replay, snapshot load, first compaction.
            time.sleep(rng.uniform(0.0, 0.05))
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            kills_before_ready += 1
            continue
        wait_ready(admin, proc)
        record = os.path.join(work, f"record-{cycle}.jsonl")
        lg = subprocess.Popen(
            [coherence, "loadgen", "--endpoint", f"https://127.0.0.1:{port}", "--certs", certs,
             "--rate", str(args.rate), "--duration", f"{args.load_seconds}s", "--concurrency", "8",
             "--dup-fraction", "0.2", "--timeout", "2s", "--record", record],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.0, args.load_seconds))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        lg.wait()
        if os.path.exists(record):
            with open(record) as f:
                for line in f:
                    r = json.loads(line)
                    if r.get("status") in (200, 202) and r.get("pcs_id"):
                        prev = acked.setdefault(r["pcs_id"], r["status"])
                        if prev != r["status"]:
                            raise SystemExit(f"{r['pcs_id']}: answered {prev} and later {r['status']}")
        if (cycle + 1) % 50 == 0:
            print(f"cycle {cycle + 1}/{args.cycles}: {len(acked)} ids acknowledged", file=sys.stderr)

    # The last verifier: every acknowledged id must be stored.
    proc = subprocess.Popen(serve, env=env, stdout=subprocess.DEVNULL, stderr=log)
    wait_ready(admin, proc)
    ctx = ssl.create_default_context(cafile=os.path.join(certs, "ca.crt"))
    ctx.load_cert_chain(os.path.join(certs, "client.crt"), os.path.join(certs, "client.key"))
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    missing, wrong = [], []
    for pcs_id, status in acked.items():
        conn.request("GET", f"/v1/records/{pcs_id}")
        resp = conn.getresponse()
        body = resp.read()
        if resp.status != 200:
            missing.append(pcs_id)
        elif json.loads(body)["status"] != status:
            wrong.append(pcs_id)
    conn.close()
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=30)
    audit = subprocess.run([verifier, "wal", "audit", "--wal-dir", wal], capture_output=True, text=True)
    report = json.loads(audit.stdout) if audit.stdout else {}
    twice = report.get("applied_more_than_once", ["(audit failed: " + audit.stderr.strip() + ")"])

    if schema:
        subprocess.run(["psql", "-h", "127.0.0.1", "-U", "postgres", "-d", "test", "-qc", f"DROP SCHEMA IF EXISTS {schema} CASCADE"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    summary = {
        "cycles": args.cycles,
        "kills_before_ready": kills_before_ready,
        "backend": args.backend,
        "seed": seed,
        "acknowledged_ids": len(acked),
        "missing_from_store": len(missing),
        "stored_with_other_status": len(wrong),
        "applied_more_than_once": len(twice),
        "wal": {k: report.get(k) for k in ("segments", "records", "bodies", "first_applications", "bodies_without_outcome", "torn_bytes")},
        "seconds": round(time.time() - started, 1),
        "work_dir": work if args.keep else None,
    }
    print(json.dumps(summary, indent=2))
    ok = not missing and not wrong and not twice and audit.returncode == 0 and len(acked) > 0
    if not args.keep and ok:
        subprocess.run(["rm", "-rf", work])
    if not ok:
        print(f"chaos: FAILED (missing {missing[:5]}, wrong status {wrong[:5]}, applied twice {twice[:5]}); work dir {work}", file=sys.stderr)
        sys.exit(1)
    print("chaos: every acknowledged id is stored once", file=sys.stderr)


if __name__ == "__main__":
    main()
