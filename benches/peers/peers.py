#!/usr/bin/env python3
"""Peer drift detectors on the shared benchmark streams, scored like `driftgate eval`.

    python3 -m venv ~/.cache/driftgate/peers-river && ~/.cache/driftgate/peers-river/bin/pip install -r benches/peers/requirements.txt
    python3 -m venv ~/.cache/driftgate/peers-alibi && ~/.cache/driftgate/peers-alibi/bin/pip install -r benches/peers/requirements-alibi.txt
    ~/.cache/driftgate/peers-river/bin/python benches/peers/peers.py --streams target/bench-streams [--driftgate target/release/driftgate]

Scoring (the shared bench README): delay = first alarm at or after change_at, minus change_at;
false alarms = every alarm on a no-change rep plus every alarm before the change, per 100k
in-control events; after any alarm the detector restarts fresh.

Calibration: each peer's sensitivity parameter is searched on the no-change reps (and the
pre-change parts) for the most sensitive value whose false-alarm rate is at most the target
(`--rate`, default 1e-5 = 1 per 100k); "default" rows use the library's defaults.
Alibi Detect's online detectors take `ert = 1/rate` and calibrate themselves by simulation;
they run in the second venv (numpy < 2) through this same script (`--alibi-worker`).
"""
import argparse, gzip, json, math, os, subprocess, sys, time


def load(path, limit_reps=None):
    reps, cur, name = [], None, None
    with gzip.open(path, "rt") as f:
        for line in f:
            e = json.loads(line)
            if e["rep"] != name:
                if limit_reps and len(reps) >= limit_reps:
                    break
                name = e["rep"]
                cur = {"rep": name, "change_at": e["change_at"], "values": []}
                reps.append(cur)
            cur["values"].append(e["value"])
    return reps


def pick_reps(reps, per_kind):
    if not per_kind:
        return reps
    c = [r for r in reps if r["change_at"] is not None][:per_kind]
    n = [r for r in reps if r["change_at"] is None][:per_kind]
    return c + n


def score(reps, make, feed):
    """Runs a fresh detector per rep (and after every alarm); returns the eval-style summary."""
    delays, missed, fa, in_control, updates = [], 0, 0, 0, 0
    t0 = time.perf_counter()
    for r in reps:
        det = make()
        c = r["change_at"]
        hit = None
        for i, v in enumerate(r["values"]):
            updates += 1
            if feed(det, v):
                if c is not None and i >= c:
                    hit = i - c
                    break
                fa += 1
                det = make()
        in_control += len(r["values"]) if c is None else c
        if c is not None:
            if hit is None:
                missed += 1
            else:
                delays.append(hit)
    el = time.perf_counter() - t0
    return {
        "mean_delay": sum(delays) / len(delays) if delays else None,
        "missed": missed,
        "false_alarms_per_100k": fa * 1e5 / max(in_control, 1),
        "updates_per_sec": updates / el if el else 0.0,
    }


def calibrate(reps, rate, make_with, feed, grid):
    """Most sensitive parameter in `grid` (ordered from least to most sensitive) whose false
    alarms on the in-control data (no-change reps and pre-change parts) are within the target,
    found by bisection (the rate rises along the grid); returns (param, summary)."""
    def ok(g):
        return score(reps, lambda: make_with(g), feed)
    lo, hi = 0, len(grid) - 1
    results = {}
    def within(i):
        if i not in results:
            results[i] = ok(grid[i])
        return results[i]["false_alarms_per_100k"] <= rate * 1e5
    if not within(lo):
        return grid[lo], results[lo]
    if within(hi):
        return grid[hi], results[hi]
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if within(mid):
            lo = mid
        else:
            hi = mid
    return grid[lo], results[lo]


def cat_codes(reps):
    cats = sorted({v for r in reps for v in r["values"][:1000]})
    return cats


def river_rows(kind, reps, rate):
    from river import drift
    rows = []
    if kind == "categorical":
        # One-vs-rest on the most common category's indicator, as the shared README's ADWIN row.
        top = max(cat_codes(reps), key=lambda c: sum(v == c for v in reps[0]["values"][:2000]))
        conv = lambda v: 1.0 if v == top else 0.0
    else:
        conv = float

    def feed(d, v):
        d.update(conv(v))
        return d.drift_detected

    rows.append(("River ADWIN (default)", score(reps, drift.ADWIN, feed)))
    deltas = [10.0 ** -e for e in (12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2)] + [0.05, 0.1, 0.2, 0.5]  # least sensitive first
    p, s = calibrate(reps, rate, lambda d: drift.ADWIN(delta=d), feed, deltas)
    rows.append((f"River ADWIN (matched, delta={p:g})", s))
    thresholds = [800, 600, 400, 300, 200, 150, 100, 75, 50, 35, 25, 18, 12, 8, 5, 3]
    p, s = calibrate(reps, rate, lambda t: drift.PageHinkley(threshold=t, mode="both"), feed, thresholds)
    rows.append((f"River PageHinkley (matched, threshold={p:g})", s))
    return rows


def focus_rows(kind, reps, rate):
    from changepoint_online import Focus, Gaussian, Bernoulli
    if kind == "categorical":
        # Bernoulli FOCuS on the most common category's indicator (one-vs-rest, as for ADWIN).
        top = max(cat_codes(reps), key=lambda c: sum(v == c for v in reps[0]["values"][:2000]))

        def make_with(t):
            return (t, Focus(Bernoulli(), side="both"))

        def feed(d, v):
            t, f = d
            f.update(1 if v == top else 0)
            return f.statistic() >= t
    else:
        fam = Bernoulli if kind == "bernoulli" else Gaussian

        def make_with(t):
            return (t, Focus(fam(), side="both"))

        def feed(d, v):
            t, f = d
            f.update(v)
            return f.statistic() >= t

    thresholds = [30.0 - 0.5 * i for i in range(45)]
    p, s = calibrate(reps, rate, make_with, feed, thresholds)
    return [(f"FOCuS (pre-change parameter unknown, threshold={p:g})", s)]


def alibi_rows(kind, reps, rate):
    import numpy as np
    from alibi_detect.cd import CVMDriftOnline, FETDriftOnline
    rows = []
    n_ref = 1000
    if kind == "categorical":
        return rows  # neither online detector takes categorical data

    def run(make):
        delays, missed, fa, inc, upd = [], 0, 0, 0, 0
        t0 = time.perf_counter()
        for r in reps:
            vals = np.asarray(r["values"], dtype=np.float64)
            c = r["change_at"]
            start = 0
            hit = None
            while start + n_ref < len(vals) and hit is None:
                det = make(vals[start:start + n_ref])
                i = start + n_ref
                alarm = None
                while i < len(vals):
                    upd += 1
                    if det.predict(vals[i:i + 1] if kind == "real" else np.array([int(vals[i])]))["data"]["is_drift"]:
                        alarm = i
                        break
                    i += 1
                if alarm is None:
                    break
                if c is not None and alarm >= c:
                    hit = alarm - c
                else:
                    fa += 1
                    start = alarm + 1
            inc += len(vals) if c is None else c
            if c is not None:
                (delays.append(hit) if hit is not None else None)
                missed += hit is None
        el = time.perf_counter() - t0
        return {"mean_delay": sum(delays) / len(delays) if delays else None, "missed": missed,
                "false_alarms_per_100k": fa * 1e5 / max(inc, 1), "updates_per_sec": upd / el if el else 0.0}

    ert = 1.0 / rate
    if kind == "bernoulli":
        rows.append(("Alibi FETDriftOnline (ert=1/rate, windows 50,200)", run(
            lambda ref: FETDriftOnline(ref.astype(int), ert=ert, window_sizes=[50, 200], n_bootstraps=max(20000, int(3 * ert)), verbose=False))))
    else:
        rows.append(("Alibi CVMDriftOnline (ert=1/rate, windows 50,200)", run(
            lambda ref: CVMDriftOnline(ref, ert=ert, window_sizes=[50, 200], n_bootstraps=max(20000, int(3 * ert)), verbose=False))))
    return rows


SCENARIOS = [("bernoulli", "bernoulli"), ("gaussian", "real"), ("categorical", "categorical")]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--streams", default="target/bench-streams")
    ap.add_argument("--rate", type=float, default=1e-5)
    ap.add_argument("--reps", type=int, default=0, help="use only this many change and no-change reps (0 = all)")
    ap.add_argument("--only", default=None, help="one scenario")
    ap.add_argument("--driftgate", default=None, help="path of the driftgate binary, for its rows")
    ap.add_argument("--alibi-python", default=os.path.expanduser("~/.cache/driftgate/peers-alibi/bin/python"))
    ap.add_argument("--alibi", action="store_true", help="also run Alibi Detect (slow: it simulates 3/rate bootstrap streams per reference)")
    ap.add_argument("--alibi-worker", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    out = []
    for scen, kind in SCENARIOS:
        if a.only and a.only != scen:
            continue
        path = os.path.join(a.streams, f"{scen}.jsonl.gz")
        reps = pick_reps(load(path), a.reps)
        if a.alibi_worker:
            for name, s in alibi_rows(kind, reps, a.rate):
                out.append({**s, "scenario": scen, "detector": name})
            continue
        rows = []
        if a.driftgate:
            # The same reps as the peers, written to a temporary file for `driftgate eval`.
            import tempfile
            with tempfile.NamedTemporaryFile("w", suffix=".jsonl", delete=False) as t:
                for r in reps:
                    for i, v in enumerate(r["values"]):
                        t.write(json.dumps({"rep": r["rep"], "seq": i, "value": v, "change_at": r["change_at"]}) + "\n")
            try:
                for label, opts in (("driftgate auto", "{}"), ("driftgate auto, calibration: bound", '{"calibration":"bound"}')):
                    r = json.loads(subprocess.check_output([a.driftgate, "eval", "--metric", kind, "--input", t.name,
                                                            "--false-alarm-rate", str(a.rate), "--json", "--options", opts]))
                    rows.append((label, r))
            finally:
                os.unlink(t.name)
        rows += river_rows(kind, reps, a.rate)
        rows += focus_rows(kind, reps, a.rate)
        for name, s in rows:
            out.append({**s, "scenario": scen, "detector": name})
    if a.alibi_worker:
        print(json.dumps(out))
        return
    if not a.alibi:
        pass
    elif os.path.exists(a.alibi_python):
        args = [a.alibi_python, __file__, "--alibi-worker", "--streams", a.streams, "--rate", str(a.rate), "--reps", str(a.reps)]
        if a.only:
            args += ["--only", a.only]
        try:
            out += json.loads(subprocess.check_output(args))
        except (subprocess.CalledProcessError, json.JSONDecodeError) as e:
            print(f"alibi rows failed: {e}", file=sys.stderr)
    else:
        print(f"no Alibi Detect venv at {a.alibi_python}: see requirements-alibi.txt", file=sys.stderr)
    print(f"{'scenario':12} {'detector':58} {'mean delay':>10} {'missed':>6} {'FA/100k':>8} {'updates/s':>10}")
    for r in out:
        md = "-" if r["mean_delay"] is None else f"{r['mean_delay']:.1f}"
        print(f"{r['scenario']:12} {r['detector']:58} {md:>10} {r['missed']:>6} {r['false_alarms_per_100k']:>8.2f} {r['updates_per_sec']:>10.0f}")


if __name__ == "__main__":
    main()
