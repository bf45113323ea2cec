#!/usr/bin/env python3
"""The statistics of `coherence analyze`, written the way a pandas/numpy user would.

Reads telemetry JSONL (one object per line, see core/src/telemetry.rs) and computes:

* the medians of qps, latency_p95_ms and infra_cost_usd over all lines;
* the per-sample FTI = (cost/cost0) / ((qps/qps0) * (lat0/lat)) against those medians, its
  mean, and the per-sample grades (OK <= 1.00 < WARN <= 1.05 < FAIL);
* per workload/host and per signal (the 8 signals) the time-based rolling 1 h mean and sample
  standard deviation at every sample (window (t - 1h, t], pandas' `rolling("1h")`), the
  volatility index stdev/|mean| and the drift risk of every sample's window
  (insufficient_data when n < 10, high when vi > 0.25, medium when vi > 0.10, else low;
  `errors` uses 0.75 / 1.5), counted per host and signal.

Detectors and incident correlation, which `coherence analyze` also runs, are not reproduced.

Prints one JSON document: the timing of each phase (`timings_s`) and the results.

    python bench/pandas_collector.py bench/out/telemetry-1m.jsonl
"""

import argparse
import json
import sys
import time

import numpy as np
import pandas as pd

SIGNALS = [
    "cpu",
    "memory_mb",
    "requests_in",
    "requests_out",
    "errors",
    "qps",
    "latency_p95_ms",
    "infra_cost_usd",
]
# (medium above, high above) of the volatility index; the collector's defaults.
DRIFT = {s: (0.10, 0.25) for s in SIGNALS}
DRIFT["errors"] = (0.75, 1.5)
MIN_SAMPLES = 10
FTI_OK, FTI_WARN = 1.00, 1.05
# A volatility index this close (relative) to a threshold may fall on either side of it
# depending on how the rolling sums were rounded; such samples are counted as ties.
TIE_REL = 1e-9


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    ap.add_argument("file", help="telemetry JSONL")
    ap.add_argument("--window", default="1h", help="rolling window (pandas offset), default 1h")
    args = ap.parse_args()

    t0 = time.perf_counter()
    # The default reader (ujson). `precise_float=True` is about 4x slower here and changes no
    # result on this data (the values have at most 8 decimals); pyarrow's reader is not a
    # dependency of pandas.
    df = pd.read_json(args.file, lines=True)
    df["ts"] = pd.to_datetime(df["ts"], format="ISO8601", utc=True)
    t_read = time.perf_counter()

    med = df[["qps", "latency_p95_ms", "infra_cost_usd"]].median()
    q0, l0, c0 = med["qps"], med["latency_p95_ms"], med["infra_cost_usd"]
    fti = (df["infra_cost_usd"] / c0) / ((df["qps"] / q0) * (l0 / df["latency_p95_ms"]))
    fti_avg = fti.mean()
    grades = {
        "OK": int((fti <= FTI_OK).sum()),
        "WARN": int(((fti > FTI_OK) & (fti <= FTI_WARN)).sum()),
        "FAIL": int((fti > FTI_WARN).sum()),
    }
    t_fti = time.perf_counter()

    rolling = df.groupby(["workload", "host"], sort=True).rolling(args.window, on="ts")[SIGNALS]
    mean = rolling.mean()
    std = rolling.std()
    t_kernel = time.perf_counter()

    n = df.groupby(["workload", "host"], sort=True).rolling(args.window, on="ts")["qps"].count()
    drift, ties = {}, {}
    # The rolling results are indexed by (workload, host, original row).
    keys = mean.index.droplevel(-1)
    n = n.to_numpy()
    for sig in SIGNALS:
        m = mean[sig].to_numpy()
        # One sample has no sample stdev (NaN in pandas); the collector reports 0.
        s = np.nan_to_num(std[sig].to_numpy(), nan=0.0)
        with np.errstate(divide="ignore", invalid="ignore"):
            vi = np.where(s == 0.0, 0.0, np.where(m == 0.0, np.inf, s / np.abs(m)))
        medium, high = DRIFT[sig]
        risk = np.select(
            [n < MIN_SAMPLES, vi > high, vi > medium],
            [0, 3, 2],
            default=1,
        )
        near = (n >= MIN_SAMPLES) & (
            (np.abs(vi - medium) <= TIE_REL * medium) | (np.abs(vi - high) <= TIE_REL * high)
        )
        by_host = pd.Series(risk, index=keys).groupby(level=[0, 1])
        table = by_host.value_counts().unstack(fill_value=0)
        near_by = pd.Series(near, index=keys).groupby(level=[0, 1]).sum()
        for key, row in table.iterrows():
            name = "/".join(key)
            drift.setdefault(name, {})[sig] = {
                label: int(row.get(code, 0))
                for code, label in enumerate(["insufficient_data", "low", "medium", "high"])
            }
            ties.setdefault(name, {})[sig] = int(near_by[key])
    t_drift = time.perf_counter()

    out = {
        "timings_s": {
            "read": t_read - t0,
            "medians_fti": t_fti - t_read,
            "rolling_kernel": t_kernel - t_fti,
            "drift": t_drift - t_kernel,
            "total": t_drift - t0,
        },
        "versions": {"pandas": pd.__version__, "numpy": np.__version__},
        "count": int(len(df)),
        "medians": {"qps": float(q0), "latency_p95_ms": float(l0), "infra_cost_usd": float(c0)},
        "fti_avg": float(fti_avg),
        "grades": grades,
        "drift_counts": drift,
        "near_threshold": ties,
    }
    json.dump(out, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
