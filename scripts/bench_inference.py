"""Inference latency of the Fashion students against their MLP teacher, in one process.

Builds, with random weights of the right shapes (latency does not depend on training):

  teacher   MLP 784-512-512-10 (relu), flax nnx.Linear layers
  mps       configs/fashion_mps.yaml's student: 2×2 average pooling of the 28×28 image to
            14×14 = 196 sites, trig map d = 2, χ = 20, 10 outputs (distill.nn.MPS); the
            pooling is inside the timed function, so both sides start from the same 784 pixels
  tt        configs/layerwise_fashion.yaml's student: both hidden layers as TT-matrix layers
            (distill.nn.TTLinear, 4 cores, rank 8, relu) and the teacher's dense 512 → 10 head

Each student is timed as the layers compute it ("mps", "tt") and through `nn.inference_copy`
("mps_planned", "tt_planned": the precomputed weight layouts `distill predict`, `evaluate` and
the reported latencies use). Each model is one jitted function of (state, x); it is compiled and
warmed up first, then the models are timed interleaved (round robin, one call each per round)
for `--rounds` rounds at each batch size, so that machine load hits all of them alike. With --cpu-devices N > 1 every
model is also timed with its batch split over the N devices ("name[N devices]"), and each
student's faster path is compared with the teacher's faster path. Reports the median and the
10th percentile per call, the ratio student / teacher (below 1: the student is faster), and
`os.getloadavg()` before and after; after each batch, one line per student says it in words for
the planned path (the one `distill predict` uses). Writes JSON.

    python scripts/bench_inference.py                         # batch 1 and 256
    python scripts/bench_inference.py --batch 1,64,256 --rounds 400
    python scripts/bench_inference.py --processes 6           # TT latency across processes
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec  # noqa: E402

from distill.io import write_json  # noqa: E402
from distill.nn import MPS, TTLinear, inference_copy  # noqa: E402
from distill.tn.mps import METHODS as MPS_METHODS  # noqa: E402
from distill.tn.tt import TT_METHODS  # noqa: E402
from distill.nn.common import stored_plan  # noqa: E402
from distill.train.sharding import use_cpu_devices  # noqa: E402


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


class MLP(nnx.Module):
    """The teacher: 784-512-512-10, relu."""

    def __init__(self, rngs: nnx.Rngs):
        self.l1 = nnx.Linear(784, 512, rngs=rngs)
        self.l2 = nnx.Linear(512, 512, rngs=rngs)
        self.l3 = nnx.Linear(512, 10, rngs=rngs)

    def __call__(self, x):
        return self.l3(jax.nn.relu(self.l2(jax.nn.relu(self.l1(x)))))


class TTStudent(nnx.Module):
    """layerwise_fashion: TT hidden layers (4 cores, rank 8) and a dense head."""

    def __init__(self, rngs: nnx.Rngs, rank: int = 8, n_factors: int = 4, method=None):
        self.l1 = TTLinear(784, 512, rank=rank, n_factors=n_factors, activation="relu",
                           method=method, rngs=rngs)
        self.l2 = TTLinear(512, 512, rank=rank, n_factors=n_factors, activation="relu",
                           method=method, rngs=rngs)
        self.l3 = nnx.Linear(512, 10, rngs=rngs)

    def __call__(self, x):
        return self.l3(self.l2(self.l1(x)))


class MPSStudent(nnx.Module):
    """fashion_mps: 2×2 average pooling to 14×14, then an MPS (trig d 2, χ 20)."""

    def __init__(self, rngs: nnx.Rngs, chi: int = 20, contraction=None):
        self.mps = MPS(196, 10, bond_dim=chi, feature_map="trig", feature_dim=2,
                       contraction=contraction, rngs=rngs)

    def __call__(self, x):
        img = jnp.reshape(x, (x.shape[0], 14, 2, 14, 2))  # 2×2 blocks, summed elementwise
        pooled = 0.25 * (img[:, :, 0, :, 0] + img[:, :, 0, :, 1] + img[:, :, 1, :, 0] + img[:, :, 1, :, 1])
        return self.mps(jnp.reshape(pooled, (x.shape[0], 196)))


def jitted(model):
    """x → model(x), jitted; the state travels as a flat list of arrays (cheap dispatch)."""
    graphdef, state = nnx.split(model)
    leaves, treedef = jax.tree.flatten(state)

    @jax.jit
    def f(leaves, x):
        return nnx.merge(graphdef, jax.tree.unflatten(treedef, leaves))(x)

    return lambda x: f(leaves, x)


def build(names, seed=0, mps_contraction=None, tt_method=None):
    rngs = nnx.Rngs(seed)
    makers = {
        "teacher": lambda: MLP(rngs),
        "mps": lambda: MPSStudent(rngs, contraction=mps_contraction),
        "tt": lambda: TTStudent(rngs, method=tt_method),
    }
    return {n: makers[n]() for n in names}


def time_interleaved(fns: dict, x, rounds: int) -> dict:
    """Compile + warm up each fn, then `rounds` round-robin calls; per-call seconds."""
    compile_s = {}
    for name, f in fns.items():
        t0 = time.perf_counter()
        jax.block_until_ready(f(x))
        compile_s[name] = time.perf_counter() - t0
        for _ in range(5):
            jax.block_until_ready(f(x))
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f(x))
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name, ts in times.items():
        ts = sorted(ts)
        out[name] = {"median_ms": statistics.median(ts) * 1e3,
                     "p10_ms": ts[len(ts) // 10] * 1e3,
                     "min_ms": ts[0] * 1e3,
                     "compile_s": compile_s[name], "calls": len(ts)}
    return out


def split_over(mesh, f):
    """f with its input's rows split over the mesh's devices and the mesh in context (the
    sweep then splits itself, `tn.mps_sweep`); the state is replicated on first use."""
    rows = NamedSharding(mesh, PartitionSpec("data"))

    def run(x):
        with jax.set_mesh(mesh):
            return f(jax.device_put(x, rows))

    return run


def bench(args) -> dict:
    names = ["teacher"] + [s for s in args.students.split(",") if s]
    models = build(names, mps_contraction=args.mps_contraction, tt_method=args.tt_method)
    fns = {n: jitted(m) for n, m in models.items()}
    params = {n: sum(int(np.prod(a.shape)) for a in jax.tree.leaves(nnx.state(m, nnx.Param)))
              for n, m in models.items()}
    if "mps" in models:
        names.append("mps_planned")
    if "tt" in models:
        names.append("tt_planned")
    rows = []
    rng = np.random.default_rng(0)
    for batch in args.batch:
        # the students as `distill predict` runs them: `nn.inference_copy` (tn.mps.plan_contraction's
        # core layouts, features formed in the sweep's layout; tn.tt.tt_plan's fixed products)
        copies = {n: inference_copy(models[n], batch) for n in ("mps", "tt") if n in models}
        fns.update({f"{n}_planned": jitted(c) for n, c in copies.items()})
        if "mps" in copies:
            _, method, sites = copies["mps"].mps.plan_static
            print(f"  batch {batch}: planned MPS contraction {method!r}, {sites} site(s) per step", flush=True)
        if "tt" in copies:
            methods = [stored_plan(layer)[0].method for layer in (copies["tt"].l1, copies["tt"].l2)]
            print(f"  batch {batch}: planned TT layers {methods}", flush=True)
        x = jnp.asarray(rng.uniform(size=(batch, 784)), jnp.float32)
        timed = dict(fns)
        n_dev = len(jax.devices())
        if n_dev > 1 and batch % n_dev == 0:  # also as `predict` runs it with several devices
            mesh = Mesh(np.asarray(jax.devices()), ("data",))
            timed.update({f"{n}[{n_dev} devices]": split_over(mesh, f) for n, f in fns.items()})
        load_before = load_avg()
        t = time_interleaved(timed, x, args.rounds)
        row = {"batch": batch, "load_avg_before": load_before, "load_avg_after": load_avg(),
               "timing": t}
        for n in names[1:]:
            row[f"{n}_over_teacher_median"] = t[n]["median_ms"] / t["teacher"]["median_ms"]
            row[f"{n}_over_teacher_p10"] = t[n]["p10_ms"] / t["teacher"]["p10_ms"]
        if len(timed) > len(fns):  # each model on its faster path, against the teacher's faster
            best = {n: min((v for k, v in t.items() if k.split("[")[0] == n), key=lambda v: v["median_ms"])
                    for n in names}
            for n in names[1:]:
                row[f"{n}_best_over_teacher_best_median"] = best[n]["median_ms"] / best["teacher"]["median_ms"]
                row[f"{n}_best_over_teacher_best_p10"] = best[n]["p10_ms"] / best["teacher"]["p10_ms"]
        rows.append(row)
        cells = "  ".join(f"{n} {t[n]['median_ms']:.3f} ms (p10 {t[n]['p10_ms']:.3f})" for n in t)
        ratios = "  ".join(f"{n}/teacher {row[f'{n}_over_teacher_median']:.2f}" for n in names[1:])
        print(f"batch {batch:4d}: {cells}  |  {ratios}  load {load_before}", flush=True)
        print("\n".join(verdicts(row, names)), flush=True)
    return {"params": params, "results": rows}


def across_processes(args) -> list:
    """Re-run this script's batch-`--batch` timing in fresh processes (bimodality check)."""
    out = []
    for i in range(args.processes):
        cmd = [sys.executable, __file__, "--rounds", str(args.rounds), "--students", args.students,
               "--cpu-devices", str(args.cpu_devices),
               "--batch", ",".join(map(str, args.batch)), "--json", f"/tmp/_bench_inf_{os.getpid()}_{i}.json"]
        if args.tt_method:
            cmd += ["--tt-method", args.tt_method]
        if args.mps_contraction:
            cmd += ["--mps-contraction", args.mps_contraction]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        res = json.loads(Path(cmd[-1]).read_text())
        Path(cmd[-1]).unlink()
        out.append(res)
        med = {r["batch"]: {n: round(v["median_ms"], 3) for n, v in r["timing"].items()}
               for r in res["results"]}
        print(f"process {i}: {med}", flush=True)
    return out


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and each option's default (the benchmark scripts' --help)."""


def _batches(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a comma list of whole numbers, e.g. 1,256; got {text!r}") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"batch sizes must be ≥ 1; got {text!r}")
    return values


def verdicts(row: dict, names: list[str]) -> list[str]:
    """One line per planned student: its time over the teacher's and what that means."""
    out = []
    for n in names:
        if n.endswith("_planned"):
            r = row[f"{n}_over_teacher_median"]
            word = "as fast as" if f"{r:.2f}" == "1.00" else ("faster than" if r < 1 else "slower than")
            out.append(f"  {n.removesuffix('_planned').upper()} student, as `distill predict` runs it: {r:.2f}× the "
                       f"teacher's median time at batch {row['batch']} ({word} the teacher)")
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--batch", type=_batches, default=[1, 256], help="comma list of batch sizes to time")
    ap.add_argument("--rounds", type=int, default=200, help="interleaved calls per model and batch (≥ 1)")
    ap.add_argument("--students", default="mps,tt", help="comma list of mps,tt")
    ap.add_argument("--mps-contraction", default=None, choices=list(MPS_METHODS),
                    help="force tn.mps.contract's method")
    ap.add_argument("--tt-method", default=None, choices=list(TT_METHODS), help="force tn.tt.tt_matvec's method")
    ap.add_argument("--processes", type=int, default=0,
                    help="also repeat the timing in this many fresh processes")
    ap.add_argument("--cpu-devices", type=int, default=1,
                    help="CPU devices JAX exposes (runtime.cpu_devices); above 1, every model is "
                    "also timed with its batch split over them")
    ap.add_argument("--json", default="bench_results/bench_inference.json", help="where to write the JSON results")
    args = ap.parse_args(argv)
    if args.cpu_devices < 1:
        ap.error(f"--cpu-devices must be ≥ 1, got {args.cpu_devices}")
    if args.rounds < 1:
        ap.error(f"--rounds must be ≥ 1, got {args.rounds}")
    if args.processes < 0:
        ap.error(f"--processes must be ≥ 0, got {args.processes}")
    chosen = set(filter(None, args.students.split(",")))
    if not chosen:
        ap.error("--students: give mps, tt or mps,tt")
    if chosen - {"mps", "tt"}:
        ap.error(f"--students: unknown {', '.join(sorted(chosen - {'mps', 'tt'}))}; choose from mps, tt")
    use_cpu_devices(args.cpu_devices)  # before the first JAX computation
    env = {"jax_version": jax.__version__, "backend": jax.default_backend(),
           "cpu_count": os.cpu_count(), "platform": platform.platform(),
           "load_avg_start": load_avg()}
    print(f"jax {jax.__version__}, backend {env['backend']}, cpus {env['cpu_count']}, "
          f"load {env['load_avg_start']}")
    out = {"benchmark": "inference latency per call, students vs MLP teacher, float32, jitted, "
           "interleaved", **env, **bench(args)}
    if args.processes:
        out["processes"] = across_processes(args)
    out["load_avg_end"] = load_avg()
    return write_results(args.json, out, "bench_inference.py")


def write_results(path: str | Path, out: dict, prog: str) -> int:
    """Write `out` as JSON to `path` (`distill.io.write_json`: atomic); 0, or 1 with a one-line
    error when the folder cannot be written (the benchmark scripts' exit status)."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_json(path, out)
    except OSError as err:
        print(f"{prog}: cannot write {path} ({err.strerror or err}); choose another --json", file=sys.stderr)
        return 1
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
