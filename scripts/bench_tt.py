"""Latency of the TT-matrix (MPO) product `tn.tt.tt_matvec` against the dense layer it replaces.

For each layer N_in → N_out (d cores, modes from `tt.factorize`), each TT rank and each batch:
median forward latency of

  dense        x @ W.T with W (N_out, N_in) a stored dense weight (the layer TT replaces)
  cores/split/dense(tt)   tt_matvec(cores, x, method=...) for every method in tt.TT_METHODS
  auto         tt_matvec(cores, x) (method=None: `tt.choose_tt_method` picks)

and, for the --grad-batches, one forward+backward (value_and_grad of <y, g> w.r.t. the weights
and x, as in a layer inside a network). Everything is jitted; every function is called twice
before timing (compile, first run) and then timed in interleaved rounds (so a change of machine
load hits all of them alike), block_until_ready after every call. Prints a table and writes
JSON (one entry per shape, jax version, cpu count, load average at start and end).

    python scripts/bench_tt.py                                # the default grid
    python scripts/bench_tt.py --layers 784x512 --ranks 8 --batches 256 --rounds 9
    python scripts/bench_tt.py --calibrate                    # also fit choose_tt_method's model

--calibrate fits the constants of the CPU cost model in `tt.choose_tt_method` (MAC/s,
elements/s, out-of-cache elements/s and the cache size, seconds per op; see `calibrate`) to
the measured forward times of the TT methods, prints them, and reports how often the fitted
rule picks the fastest method. Fit several runs together with --refit A.json B.json ….
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from distill.tn import tt  # noqa: E402


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def parse_layer(text: str) -> tuple[int, int]:
    try:
        n_in, n_out = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"layer must look like 784x512, got {text!r}") from None
    return n_in, n_out


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


def timed(fns: dict, *, rounds: int, calls: int) -> dict:
    """Median and min seconds per call of each zero-argument function, timed in rounds."""
    for fn in fns.values():  # compile + first run, not timed
        fn()
        fn()
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(calls):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return {name: {"median_ms": 1e3 * statistics.median(ts), "min_ms": 1e3 * min(ts),
                   "calls": len(ts)} for name, ts in times.items()}


def random_cores(rng, in_modes, out_modes, rank):
    """Random float32 cores with the layer's ranks (rank capped per bond by tt_max_ranks)."""
    ranks = (1, *tt.tt_max_ranks(in_modes, out_modes, rank), 1)
    cores = []
    for k in range(len(in_modes)):
        shape = (ranks[k], out_modes[k], in_modes[k], ranks[k + 1])
        cores.append(jnp.asarray(rng.normal(size=shape) / math.sqrt(ranks[k] * in_modes[k]),
                                 jnp.float32))
    return cores, ranks


def forward_fns(cores, W, x) -> dict:
    def runner(f, *args):
        f = jax.jit(f)
        return lambda: jax.block_until_ready(f(*args))

    fns = {"dense": runner(lambda W, x: x @ W.T, W, x)}
    for m in tt.TT_METHODS:
        fns[f"tt:{m}"] = runner(functools.partial(tt.tt_matvec, method=m), cores, x)
    fns["auto"] = runner(tt.tt_matvec, cores, x)
    return fns


def fwd_bwd_fns(cores, W, x, g) -> dict:
    def runner(apply, params):
        def loss(p, x):
            return jnp.sum(apply(p, x) * g)

        f = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))
        return lambda: jax.block_until_ready(f(params, x))

    fns = {"dense": runner(lambda W, x: x @ W.T, W)}
    for m in tt.TT_METHODS:
        fns[f"tt:{m}"] = runner(functools.partial(tt.tt_matvec, method=m), cores)
    fns["auto"] = runner(tt.tt_matvec, cores)
    return fns


MODEL = ("_CPU_MACS_PER_S", "_CPU_ELEMS_PER_S", "_CPU_SPILL_PER_S", "_CPU_CACHE_ELEMS",
         "_CPU_S_PER_OP")


def fit_model(entries: list[dict], cache_elems: int, spill_per_s: float):
    """NNLS fit of seconds ≈ MACs/a + elements/b + ops·d, given the out-of-cache term
    spilled/spill_per_s, on relative error. Returns (model, residual, relative errors)."""
    from scipy.optimize import nnls

    saved = tt._CPU_CACHE_ELEMS
    tt._CPU_CACHE_ELEMS = cache_elems
    try:
        feats, times = [], []
        for e in entries:
            for m in tt.TT_METHODS:
                feats.append(tt._method_cost(m, e["in_modes"], e["out_modes"], e["ranks"],
                                             e["batch"]))
                times.append(e["forward_ms"][f"tt:{m}"]["median_ms"] / 1e3)
    finally:
        tt._CPU_CACHE_ELEMS = saved
    feats, times = np.asarray(feats, float), np.asarray(times)
    spill = feats[:, 2] / spill_per_s / times
    rows = feats[:, [0, 1, 3]] / times[:, None]  # each row / t: relative error
    coef, resid = nnls(rows, 1 - spill)
    rel = np.abs(rows @ coef + spill - 1)
    model = dict(zip(MODEL, [1 / coef[0] if coef[0] > 0 else math.inf,
                             1 / coef[1] if coef[1] > 0 else math.inf,
                             spill_per_s, cache_elems, float(coef[2])]))
    return model, float(resid), rel


def rule_picks(entries: list[dict], model: dict) -> list[dict]:
    """choose_tt_method's pick under `model` against the measured fastest method, per shape."""
    saved = {name: getattr(tt, name) for name in MODEL}
    for name, value in model.items():
        setattr(tt, name, value)
    try:
        picks = []
        for e in entries:
            pick = tt.choose_tt_method(e["in_modes"], e["out_modes"], e["ranks"], e["batch"], "cpu")
            ms = {m: e["forward_ms"][f"tt:{m}"]["median_ms"] for m in tt.TT_METHODS}
            best = min(ms, key=ms.get)
            picks.append({"layer": e["layer"], "ranks": e["ranks"], "batch": e["batch"],
                          "pick": pick, "best": best, "regret": ms[pick] / ms[best]})
    finally:
        for name, value in saved.items():
            setattr(tt, name, value)
    return picks


def calibrate(entries: list[dict]) -> dict:
    """Fit `tt.choose_tt_method`'s CPU cost model to the TT methods' forward medians.

    The cache size (elements: 2^k, 1.5·2^k) and the out-of-cache rate (elements/s, 5e8-1e10
    in steps of √2) are searched on a grid, the other three constants fitted for each by
    non-negative least squares on relative error; the grid point kept is the one whose rule
    loses least time against the measured fastest method (mean of time(pick) / time(best),
    then the worst case, then the residual): the point of the model is its picks, and past the
    cache size the times jump by 3-5× (not always: a least-squares fit prices that too low)."""
    candidates = []
    for k in range(18, 26):
        for f in (1, 1.5):
            for spill in 5e8 * np.sqrt(2) ** np.arange(9):
                model, resid, rel = fit_model(entries, int(f * (1 << k)), float(spill))
                regrets = [p["regret"] for p in rule_picks(entries, model)]
                candidates.append((float(np.mean(regrets)), max(regrets), resid, model, rel))
    _, _, _, model, rel = min(candidates, key=lambda c: c[:3])
    return {"model": model, "median_rel_err": float(np.median(rel)),
            "max_rel_err": float(rel.max()), "picks": rule_picks(entries, model)}


def print_calibration(cal: dict) -> None:
    print("\ncalibration: " + ", ".join(f"{k} = {v:.3g}" for k, v in cal["model"].items())
          + f"; relative error median {cal['median_rel_err']:.2f}, max {cal['max_rel_err']:.2f}")
    wrong = [p for p in cal["picks"] if p["pick"] != p["best"]]
    regrets = [p["regret"] for p in cal["picks"]]
    print(f"the fitted rule picks the fastest method for {len(regrets) - len(wrong)} of "
          f"{len(regrets)} shapes (mean time(pick)/time(fastest) {np.mean(regrets):.3f}); "
          "otherwise:")
    for p in wrong:
        print(f"  {p['layer']} ranks {p['ranks']} batch {p['batch']}: picks {p['pick']}, "
              f"{p['best']} is {p['regret']:.2f}x faster")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Forward (and forward+backward) latency of tn.tt.tt_matvec's methods against "
                    "the dense x @ W.T they replace.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--layers", type=lambda s: [parse_layer(v) for v in s.split(",")],
                    default=[(784, 512), (512, 512)], help="N_inxN_out, comma separated")
    ap.add_argument("--cores", type=int, default=4, help="number of TT cores d")
    ap.add_argument("--ranks", type=int_list, default=[4, 8, 16], help="TT ranks (max per bond)")
    ap.add_argument("--batches", type=int_list, default=[1, 64, 256, 1024], help="batch sizes")
    ap.add_argument("--grad-batches", type=int_list, default=[256],
                    help="batches that also get a forward+backward timing")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds")
    ap.add_argument("--calls", type=int, default=10, help="timed calls per function per round")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random cores and inputs")
    ap.add_argument("--calibrate", action="store_true",
                    help="fit choose_tt_method's CPU cost model to the forward timings")
    ap.add_argument("--refit", nargs="+", metavar="JSON", default=None,
                    help="no timing: fit the cost model to the entries of these earlier outputs")
    ap.add_argument("--json", default="bench_results/bench_tt.json", help="output JSON path")
    args = ap.parse_args(argv)

    if args.refit:
        entries = [e for path in args.refit for e in json.loads(Path(path).read_text())["entries"]]
        print_calibration(calibrate(entries))
        return 0

    start_load = load_avg()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, cpus {os.cpu_count()}, "
          f"load {start_load}", flush=True)
    rng = np.random.default_rng(args.seed)
    entries = []
    for n_in, n_out in args.layers:
        in_modes, out_modes = tt.factorize(n_in, args.cores), tt.factorize(n_out, args.cores)
        for rank in args.ranks:
            cores, ranks = random_cores(rng, in_modes, out_modes, rank)
            W = tt.tt_to_dense(cores)
            for batch in args.batches:
                x = jnp.asarray(rng.normal(size=(batch, n_in)), jnp.float32)
                ref = np.asarray(x, np.float64) @ np.asarray(W, np.float64).T
                for m in tt.TT_METHODS:  # a benchmark of wrong answers is worthless
                    y = np.asarray(tt.tt_matvec(cores, x, method=m), np.float64)
                    err = np.abs(y - ref).max() / max(np.abs(ref).max(), 1e-30)
                    assert err < 1e-4, (m, err)
                entry = {
                    "layer": [n_in, n_out], "in_modes": list(in_modes),
                    "out_modes": list(out_modes), "ranks": list(ranks), "batch": batch,
                    "tt_params": tt.tt_num_params(cores), "dense_params": n_in * n_out,
                    "auto_method": tt.choose_tt_method(in_modes, out_modes, ranks, batch),
                    "forward_ms": timed(forward_fns(cores, W, x), rounds=args.rounds,
                                        calls=args.calls),
                }
                if batch in args.grad_batches:
                    g = jnp.asarray(rng.normal(size=(batch, n_out)), jnp.float32)
                    entry["fwd_bwd_ms"] = timed(fwd_bwd_fns(cores, W, x, g), rounds=args.rounds,
                                                calls=args.calls)
                entries.append(entry)
                fw = entry["forward_ms"]
                print(f"  {n_in}->{n_out} ranks {ranks} batch {batch}: "
                      + ", ".join(f"{k} {v['median_ms']:.3f}" for k, v in fw.items())
                      + f" ms (auto = {entry['auto_method']}), load {load_avg()}", flush=True)
    end_load = load_avg()

    names = ["dense"] + [f"tt:{m}" for m in tt.TT_METHODS] + ["auto"]
    header = (f"{'layer':>9} {'rank':>4} {'batch':>5} "
              + " ".join(f"{n:>9}" for n in names) + f" {'picked':>6} {'auto/dense':>10}")
    lines = ["", "forward latency, ms (median; jitted, block_until_ready, warm-up excluded)",
             header]
    for e in entries:
        fw = e["forward_ms"]
        ratio = fw["auto"]["median_ms"] / fw["dense"]["median_ms"]
        lines.append(f"{e['layer'][0]:>4}>{e['layer'][1]:<4} {max(e['ranks']):>4} {e['batch']:>5} "
                     + " ".join(f"{fw[n]['median_ms']:>9.3f}" for n in names)
                     + f" {e['auto_method']:>6} {ratio:>9.2f}x")
    grad = [e for e in entries if "fwd_bwd_ms" in e]
    if grad:
        lines += ["", "forward+backward per step, ms (grads w.r.t. the weights and x)", header]
        for e in grad:
            fb = e["fwd_bwd_ms"]
            lines.append(f"{e['layer'][0]:>4}>{e['layer'][1]:<4} {max(e['ranks']):>4} "
                         f"{e['batch']:>5} "
                         + " ".join(f"{fb[n]['median_ms']:>9.3f}" for n in names)
                         + f" {e['auto_method']:>6} "
                         f"{fb['auto']['median_ms'] / fb['dense']['median_ms']:>9.2f}x")
    lines.append(f"load average: start {start_load}, end {end_load}")
    print("\n".join(lines))

    out = {"jax_version": jax.__version__, "backend": jax.default_backend(),
           "cpu_count": os.cpu_count(), "platform": platform.platform(),
           "load_avg_start": start_load, "load_avg_end": end_load,
           "argv": sys.argv[1:] if argv is None else list(argv),
           "rounds": args.rounds, "calls_per_round": args.calls, "entries": entries}
    if args.calibrate:
        out["calibration"] = calibrate(entries)
        print_calibration(out["calibration"])
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
