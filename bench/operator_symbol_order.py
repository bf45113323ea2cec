#!/usr/bin/env python3
"""Records which functions a running `coherence-operator` executes and writes them, by symbol
name, to `operator/symbol-order.txt`: the link order of `operator/build.rs`, which puts them
at the start of the binary's code so that what runs shares as few pages as possible.

Method: the operator's size-tuned build (`--profile operator`) runs under Valgrind's callgrind
through `bench/operator_rss.py` — the fake API server with a small population (default 40
policies, a Deployment each with two pods), convergence, pod admission reviews through the
webhook, a steady phase with resyncs, SIGTERM — and every function callgrind saw execute in the
operator's own binary is listed. Callgrind counts executed instructions, so the list does not
depend on timing or on what else the machine runs.

    python3 bench/operator_symbol_order.py          # then rebuild: cargo build --profile operator
    make operator-symbol-order

Symbol names stay the same across builds of the same dependencies and profile, so the list
only needs making again when the operator's code has changed much; names that went away are
skipped by the linker.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def executed_functions(callgrind_out, binary):
    """Mangled names of the functions of `binary` that the callgrind record shows executing.
    Records are written with --compress-strings=no: `ob=` names the object of the `fn=` lines
    that follow it, and `cob=`/`cfn=` name callees."""
    names = set()
    obj = None
    cobj = None
    real = os.path.realpath(binary)
    with open(callgrind_out, errors="replace") as f:
        for line in f:
            if line.startswith("ob="):
                obj = os.path.realpath(line[3:].strip())
            elif line.startswith("cob="):
                cobj = os.path.realpath(line[4:].strip())
            elif line.startswith("fn="):
                if obj == real:
                    names.add(line[3:].strip())
                cobj = None
            elif line.startswith("cfn="):
                if (cobj or obj) == real:
                    names.add(line[4:].strip())
                cobj = None
    # Callgrind marks functions it could not name, or names by address: not linkable symbols.
    return sorted(n for n in names if n and not n.startswith("0x") and " " not in n)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--policies", type=int, default=40)
    ap.add_argument("--out", default=os.path.join(ROOT, "operator", "symbol-order.txt"))
    ap.add_argument("--target-dir", default=os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")))
    a = ap.parse_args()
    if a.policies < 1:
        ap.error(f"--policies: expected 1 or more, got {a.policies}")
    binary = os.path.join(a.target_dir, "operator", "coherence-operator")
    with tempfile.TemporaryDirectory(prefix="coherence-symbol-order-") as tmp:
        record = os.path.join(tmp, "callgrind.out")
        wrap = (f"valgrind --tool=callgrind --callgrind-out-file={record} --demangle=no "
                "--compress-strings=no --compress-pos=no --dump-instr=no")
        subprocess.run(
            [sys.executable, os.path.join(ROOT, "bench", "operator_rss.py"),
             "--profile", "operator", "--policies", str(a.policies),
             "--deployments-per-policy", "1", "--pods-per-deployment", "2",
             "--steady-seconds", "15", "--resync", "5s", "--reviews", "5",
             "--target-dir", a.target_dir, "--wrap", wrap],
            cwd=ROOT, check=True,
        )
        if not os.path.exists(record):
            raise SystemExit(f"callgrind wrote no record at {record}")
        names = executed_functions(record, binary)
    if not names:
        raise SystemExit(f"no function of {binary} in the record: is the binary stripped?")
    syms = subprocess.run(["nm", "-S", "--defined-only", binary], capture_output=True, text=True, check=True).stdout
    sizes = {}
    for line in syms.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[2] in "tTwW":
            sizes[parts[3]] = int(parts[1], 16)
    text = sum(sizes.values())
    hot = sum(sizes.get(n, 0) for n in names)
    with open(a.out, "w") as f:
        f.write("".join(n + "\n" for n in names))
    print(f"{len(names)} functions executed, {hot / 1024:.0f} KiB of the binary's "
          f"{text / 1024:.0f} KiB of functions; written to {os.path.relpath(a.out, ROOT)}")


if __name__ == "__main__":
    main()
