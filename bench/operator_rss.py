#!/usr/bin/env python3
"""The operator's own process against 2,000 CoherencePolicies: its resident set and the time
per reconcile, measured on the real `coherence-operator run` binary.

Method: the fake API server of the tests (`operator/examples/fake_apiserver.rs`) runs as its
own process over plain HTTP, seeded with N policies (default 2,000) in 50 namespaces, each
selecting a Deployment with two pods; a real verifier runs with `--insecure-dev`. The operator
is started with a kubeconfig pointing at the fake, so it does everything it does in a
cluster: waits for the CRDs, takes the Lease, watches policies, gates, Pods (metadata),
Deployments and the owned kinds, serves the webhook, reconciles. We wait until every policy's
`status.observedGeneration` equals its generation (time to converge), then sample the
operator's `VmRSS` once a second for the steady phase (`--resync`, default 20 s, so every
policy is reconciled again while sampling) and read `VmHWM` (peak) at the end. Time per
reconcile comes from the operator's own histogram
`coherence_reconcile_duration_seconds{controller="coherencepolicy"}` (sum / count).

    make bench-operator-rss          # or: python3 bench/operator_rss.py --policies 2000
    # 2,000 watched objects: 500 policies, a Deployment each with two pods; the size-tuned build
    python3 bench/operator_rss.py --policies 500 --deployments-per-policy 1 \
        --pods-per-deployment 2 --profile operator
    make bench-operator-rss OPERATOR_RSS_ARGS="--malloc-arena-max 2 --operator-arg=--worker-threads=2"

`--profile` picks the cargo profile of the operator binary (`release`, or `operator`: the
size-tuned profile of `Dockerfile.operator`); the fake API server and the verifier are always
release builds. `--malloc-arena-max` sets glibc's `MALLOC_ARENA_MAX` for the operator;
`--operator-arg` (repeatable) adds a flag to `coherence-operator run`. The operator runs with
the ENV of `Dockerfile.operator` (glibc allocator settings), as in its image, unless
`--no-image-env`. `--wrap 'heaptrack -o FILE'` runs it under a profiler. The output splits the
resident set into the binary's pages, shared libraries, the heap and other anonymous memory.
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_kib(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


def dockerfile_env():
    """The ENV of Dockerfile.operator: the operator is measured as its image runs it."""
    env = {}
    with open(os.path.join(ROOT, "Dockerfile.operator")) as f:
        for line in f:
            if line.startswith("ENV "):
                for pair in line.split()[1:]:
                    k, _, v = pair.partition("=")
                    if not v:
                        raise SystemExit(f"Dockerfile.operator: expected ENV KEY=VALUE ..., found {line.strip()!r}")
                    env[k] = v
    return env


def rss_parts(pid):
    """The resident set split by kind: heap and other anonymous memory, the binary's own pages
    (code and read-only data), shared libraries, and thread stacks."""
    parts = {"RssAnon": proc_kib(pid, "RssAnon:"), "RssFile": proc_kib(pid, "RssFile:")}
    exe = os.path.realpath(f"/proc/{pid}/exe")
    binary = libs = heap = stacks = 0
    name = ""
    with open(f"/proc/{pid}/smaps") as f:
        for line in f:
            fields = line.split()
            if re.match(r"^[0-9a-f]+-[0-9a-f]+ ", line):
                name = fields[5] if len(fields) > 5 else ""
            elif fields and fields[0] == "Rss:":
                kib = int(fields[1])
                if name == exe:
                    binary += kib
                elif name.startswith("/"):
                    libs += kib
                elif name == "[heap]":
                    heap += kib
                elif name.startswith("[stack"):
                    stacks += kib
    parts.update({"binary": binary, "libraries": libs, "[heap]": heap, "main stack": stacks,
                  "other anonymous (mmap'd arenas, thread stacks)": parts["RssAnon"] - heap - stacks})
    return parts


def get_json(url):
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.load(r)


def review_pods(webhook_port, n):
    """Sends `n` AdmissionReviews of a pod that policy app-0 selects to the operator's webhook
    (TLS, its generated certificate), as the API server does on every pod creation; each must
    come back allowed with the sidecar patch."""
    import ssl
    with open(os.path.join(ROOT, "operator", "tests", "data", "review-deployment-pod.json")) as f:
        review = json.load(f)
    req = review["request"]
    req["namespace"] = req["object"]["metadata"]["namespace"] = "ns-0"
    req["object"]["metadata"]["labels"] = {"app": "app-0", "deployment": "app-0"}
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    for i in range(n):
        req["uid"] = f"bench-{i}"
        r = urllib.request.Request(
            f"https://127.0.0.1:{webhook_port}/mutate", data=json.dumps(review).encode(),
            headers={"content-type": "application/json"}, method="POST")
        with urllib.request.urlopen(r, timeout=30, context=ctx) as resp:
            answer = json.load(resp)["response"]
        if not (answer.get("allowed") and answer.get("patch")):
            raise SystemExit(f"webhook: expected an allowed review with a patch, got {answer}")


def wait_http(url, timeout=60):
    end = time.time() + timeout
    while time.time() < end:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"{url} did not answer within {timeout} s")


def converged(api, n):
    items = get_json(f"{api}/apis/coherence.dev/v1alpha1/coherencepolicies")["items"]
    done = sum(
        1
        for p in items
        if p.get("status", {}).get("observedGeneration") == p["metadata"].get("generation")
    )
    return done, len(items)


def reconcile_stats(metrics_url):
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    vals = {}
    for suffix in ("sum", "count"):
        m = re.search(
            r'^coherence_reconcile_duration_seconds_%s\{controller="coherencepolicy"\} (\S+)' % suffix,
            text,
            re.M,
        )
        vals[suffix] = float(m.group(1)) if m else 0.0
    return vals["sum"], vals["count"]


def main():
    sys.stdout.reconfigure(line_buffering=True)
    ap = argparse.ArgumentParser()
    ap.add_argument("--policies", type=int, default=2000)
    ap.add_argument("--deployments-per-policy", type=int, default=1)
    ap.add_argument("--pods-per-deployment", type=int, default=2)
    ap.add_argument("--malloc-arena-max", type=int, default=None,
                    help="MALLOC_ARENA_MAX of the operator process (glibc)")
    ap.add_argument("--operator-arg", action="append", default=[],
                    help="an extra argument of `coherence-operator run` (repeatable)")
    ap.add_argument("--profile", default="release",
                    help="cargo profile of the operator binary: release or operator")
    ap.add_argument("--steady-seconds", type=int, default=30)
    ap.add_argument("--reviews", type=int, default=20,
                    help="AdmissionReviews sent to the webhook after convergence")
    ap.add_argument("--resync", default="20s")
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
    ap.add_argument("--no-build", action="store_true")
    ap.add_argument("--no-image-env", action="store_true",
                    help="run the operator without the ENV of Dockerfile.operator (allocator settings)")
    ap.add_argument("--wrap", default="",
                    help="a command line the operator runs under, e.g. 'heaptrack -o /tmp/op' "
                         "(the RSS figures are then the wrapper's)")
    a = ap.parse_args()
    for name in ("policies", "deployments_per_policy", "pods_per_deployment"):
        if getattr(a, name) < 0:
            ap.error(f"--{name.replace('_', '-')}: expected a count >= 0, got {getattr(a, name)}")
    if a.malloc_arena_max is not None and a.malloc_arena_max < 1:
        ap.error(f"--malloc-arena-max: expected 1 or more, got {a.malloc_arena_max}")
    if not re.fullmatch(r"[a-z][a-z0-9_-]*", a.profile):
        ap.error(f"--profile: expected a cargo profile name like release or operator, got {a.profile!r}")
    profile_flag = ["--release"] if a.profile == "release" else ["--profile", a.profile]

    if not a.no_build:
        for cmd in (
            ["cargo", "build", *profile_flag, "--locked", "-p", "coherence-operator", "--bin", "coherence-operator"],
            ["cargo", "build", "--release", "--locked", "-p", "coherence-verifier", "--bin", "coherence-verifier"],
            ["cargo", "build", "--release", "--locked", "-p", "coherence-operator", "--features", "fake", "--example", "fake_apiserver"],
        ):
            subprocess.run(cmd, cwd=ROOT, check=True)
    rel = os.path.join(a.target_dir, "release")
    op_bin = os.path.join(a.target_dir, "release" if a.profile == "release" else a.profile, "coherence-operator")
    procs = []
    tmp = tempfile.mkdtemp(prefix="coherence-bench-operator-")
    try:
        fake = subprocess.Popen(
            [os.path.join(rel, "examples", "fake_apiserver"), "--listen", "127.0.0.1:0",
             "--policies", str(a.policies),
             "--deployments-per-policy", str(a.deployments_per_policy),
             "--pods-per-deployment", str(a.pods_per_deployment)],
            stdout=subprocess.PIPE, text=True,
        )
        procs.append(fake)
        line = fake.stdout.readline().strip()
        api = line.split()[-1]
        vport, vadmin = free_port(), free_port()
        verifier = subprocess.Popen(
            [os.path.join(rel, "coherence-verifier"), "serve", "--insecure-dev",
             "--listen", f"127.0.0.1:{vport}", "--admin-listen", f"127.0.0.1:{vadmin}",
             "--wal-dir", os.path.join(tmp, "wal")],
            env=dict(os.environ, PCS_HMAC_KEY="bench-operator-key"),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        procs.append(verifier)
        wait_http(f"http://127.0.0.1:{vadmin}/readyz")
        kubeconfig = os.path.join(tmp, "kubeconfig")
        with open(kubeconfig, "w") as f:
            f.write(
                "apiVersion: v1\nkind: Config\n"
                f"clusters:\n- name: fake\n  cluster:\n    server: {api}\n"
                "users:\n- name: bench\n  user: {}\n"
                "contexts:\n- name: fake\n  context:\n    cluster: fake\n    user: bench\n"
                "current-context: fake\n"
            )
        mport, wport = free_port(), free_port()
        env = dict(os.environ, KUBECONFIG=kubeconfig, RUST_LOG="warn")
        image_env = {} if a.no_image_env else dockerfile_env()
        env.update(image_env)
        if a.malloc_arena_max is not None:
            env["MALLOC_ARENA_MAX"] = str(a.malloc_arena_max)
        started = time.time()
        op = subprocess.Popen(
            [*a.wrap.split(), op_bin, "run",
             "--verifier-endpoint", f"http://127.0.0.1:{vport}",
             "--metrics-listen", f"127.0.0.1:{mport}",
             "--webhook-listen", f"127.0.0.1:{wport}",
             "--lease-namespace", "coherence", "--identity", "bench-0",
             "--resync", a.resync, *a.operator_arg],
            env=env, stdout=subprocess.DEVNULL, stderr=open(os.path.join(tmp, "operator.log"), "w"),
        )
        procs.append(op)
        done, total = 0, a.policies
        while done < total:
            if op.poll() is not None:
                sys.stderr.write(open(os.path.join(tmp, "operator.log")).read()[-4000:])
                raise SystemExit(f"the operator exited with {op.returncode}")
            if time.time() - started > 900:
                raise SystemExit(f"not converged after 900 s: {done}/{total}")
            time.sleep(1)
            done, total = converged(api, a.policies)
        converge_s = time.time() - started
        # Pods are created in a cluster: the webhook is part of the steady state.
        review_pods(wport, a.reviews)
        sum0, count0 = reconcile_stats(f"http://127.0.0.1:{mport}/metrics")
        samples = []
        for _ in range(a.steady_seconds):
            samples.append(proc_kib(op.pid, "VmRSS:"))
            time.sleep(1)
        peak = proc_kib(op.pid, "VmHWM:")
        parts = rss_parts(op.pid)
        sum1, count1 = reconcile_stats(f"http://127.0.0.1:{mport}/metrics")
        objects = len(get_json(f"{api}/api/v1/pods")["items"]) + len(
            get_json(f"{api}/apis/apps/v1/deployments")["items"]
        ) + total
        steady_n = count1 - count0
        print(f"policies: {total}; watched pods + Deployments + policies: {objects}")
        print(f"operator: --profile {a.profile}; environment of the image: "
              f"{' '.join(f'{k}={v}' for k, v in image_env.items()) or 'none'}; "
              f"--malloc-arena-max: {a.malloc_arena_max or 'unset'}; "
              f"extra args: {' '.join(a.operator_arg) or 'none'}")
        print(f"converged (every policy's status observed) in {converge_s:.1f} s after start; "
              f"then {a.reviews} pod admission reviews, each injected")
        print(f"reconciles: {int(count1)}; mean {1000 * sum1 / max(count1, 1):.2f} ms per reconcile overall")
        if steady_n > 0:
            print(f"steady phase: {int(steady_n)} reconciles, mean {1000 * (sum1 - sum0) / steady_n:.2f} ms")
        print(
            f"operator RSS over {len(samples)} s steady: median {sorted(samples)[len(samples) // 2] / 1024:.2f} MiB, "
            f"max {max(samples) / 1024:.2f} MiB; peak (VmHWM) {peak / 1024:.2f} MiB"
        )
        print("where the resident set is (/proc/PID/status and smaps, KiB): "
              + ", ".join(f"{k} {v}" for k, v in parts.items()))
        print(f"method: real `coherence-operator run` ({a.profile}) against the fake API server over HTTP in "
              "its own process; RSS from /proc/PID/status; per-reconcile time from the operator's histogram")
    finally:
        for p in reversed(procs):
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    # A wrapper (a profiler) writes its record as the operator exits.
                    p.wait(120 if (p is procs[-1] and a.wrap) else 10)
                except subprocess.TimeoutExpired:
                    p.kill()


if __name__ == "__main__":
    main()
