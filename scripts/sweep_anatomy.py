"""Where a small-batch MPS prediction spends its time on XLA:CPU: the planned student against
the pieces of its sweep, timed interleaved in one process.

The student is `configs/fashion_mps.yaml`'s (196 sites, trig map d 2, χ 20, 10 outputs, random
weights: latency does not depend on training), run through `nn.inference_copy` as `distill
predict` runs it; its sweep is `tn.mps_sweep.sweep_forward` over the plan's step matrices
(`tn.mps.plan_contraction`: two lanes, two sites per step, boundaries folded in). Timed, per
call, jitted:

  null            a jitted function of the same arguments that returns at once: dispatch only
  student         the whole planned student from the 784 pixels (pooling, features, sweep, close)
  sweep_matvec    the sweep with site-matrix steps (`mps_sweep._step_matvec`: what the plan uses
                  on CPU for a few samples, `tn.mps._matvec_steps`), on unit start vectors and
                  features of the student's shapes
  sweep_gemm      the sweep with GEMM steps (`mps_sweep._step`: the plan's choice otherwise)
  gemm_fixed_w    the GEMM sweep with the first step's matrices at every step: no per-step slice
                  of the stacked step matrices, so (sweep_gemm − gemm_fixed_w) is what copying
                  each step's slice out of the stack costs the GEMM steps
  loop_only       a loop of the same trip count whose body only adds: the loop's own cost

It also counts the operations (XLA:CPU "thunks") in each compiled sweep's loop body: XLA:CPU runs
a body of at most 8 thunks (or one whose buffers are all ≤ 512 bytes, or a strict chain) one
after another, and any other body through its dataflow executor, which costs more per thunk;
see docs/bench/speed_ii.md ("Inference at batch 1: where the MPS student's time goes").

    python scripts/sweep_anatomy.py                    # batch 1, 3000 rounds
    python scripts/sweep_anatomy.py --batch 4 --rounds 2000
    python scripts/sweep_anatomy.py --functions sweep_matvec,sweep_gemm --rounds 8000   # the two step forms alone
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from bench_inference import HelpFormatter, MPSStudent, jitted, load_avg, write_results  # noqa: E402
from distill.nn import inference_copy  # noqa: E402
from distill.tn import mps as mps_lib  # noqa: E402
from distill.tn import mps_sweep  # noqa: E402


FUNCTIONS = ("null", "student", "sweep_matvec", "sweep_gemm", "gemm_fixed_w", "loop_only")


def loop_body_thunks(hlo_text: str) -> int:
    """The number of operations XLA:CPU executes per iteration of the (single) while loop in
    compiled HLO text: the body's instructions other than parameters, constants, tuples,
    get-tuple-element and bitcasts (which are buffer aliases, not thunks)."""
    body = re.search(r"while\(.*?body=(%[\w.\-]+)", hlo_text)
    if body is None:
        raise ValueError("no while loop in the compiled HLO")
    m = re.search(re.escape(body.group(1)) + r" \(.*?\{\n(.*?)\n\}", hlo_text, re.S)
    ops = re.findall(r"^\s+(?:ROOT )?%\S+ = \S+ (\w[\w\-]*)\(", m.group(1), re.M)
    passive = {"parameter", "constant", "tuple", "get-tuple-element", "bitcast"}
    return sum(op not in passive for op in ops)


def build(batch: int, seed: int = 0) -> dict:
    """The timed functions (each a no-argument callable) and the compiled sweep's HLO text."""
    from flax import nnx

    student = inference_copy(MPSStudent(nnx.Rngs(seed)), batch)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(size=(batch, 784)), jnp.float32)
    f_student = jitted(student)

    params = mps_lib.init_mps(jax.random.key(seed), 196, 2, 20, 10, init_std=0.1)
    plan = mps_lib.plan_contraction(params, batch)
    if plan.method != "scan":
        raise SystemExit(f"this backend plans {plan.method!r} at batch {batch}; the anatomy is of the scan")
    w_lanes, w_excess = plan.prepared
    if w_excess is not None:
        raise SystemExit("the student's plan has an excess lane; the anatomy assumes two even lanes")
    steps, lanes, chi, dk = w_lanes.shape
    v0 = jnp.asarray(rng.normal(size=(lanes, chi, batch)), jnp.float32)
    v0 = v0 / jnp.linalg.norm(v0, axis=1, keepdims=True)
    phi = jnp.asarray(rng.uniform(0.1, 1.0, size=(steps, lanes, dk // chi, batch)), jnp.float32)

    sweep_matvec = jax.jit(lambda v, w, p: mps_sweep.sweep_forward(v, w, p, matvec=True)[0])
    sweep_gemm = jax.jit(lambda v, w, p: mps_sweep.sweep_forward(v, w, p)[0])

    @jax.jit
    def gemm_fixed_w(v, w, p):
        w0 = w[0]

        def body(u, ph):
            return mps_sweep._step(u, w0, ph)[0], None

        return jax.lax.scan(body, v, p)[0]

    @jax.jit
    def loop_only(v, w, p):
        return jax.lax.scan(lambda u, _: (u + 1.0, None), v, None, length=steps)[0]

    null = jax.jit(lambda v, w, p: v)
    args = (v0, w_lanes, phi)
    return {
        "fns": {
            "null": lambda: null(*args),
            "student": lambda: f_student(x),
            "sweep_matvec": lambda: sweep_matvec(*args),
            "sweep_gemm": lambda: sweep_gemm(*args),
            "gemm_fixed_w": lambda: gemm_fixed_w(*args),
            "loop_only": lambda: loop_only(*args),
        },
        "body_thunks": {name: loop_body_thunks(f.lower(*args).compile().as_text())
                        for name, f in (("sweep_matvec", sweep_matvec), ("sweep_gemm", sweep_gemm))},
        "shape": {"steps": steps, "lanes": lanes, "chi": chi, "step_k": dk, "batch": batch,
                  "step_matrix_bytes": lanes * chi * dk * 4},
    }


def time_interleaved(fns: dict, rounds: int) -> dict:
    for f in fns.values():  # compile + warm up
        for _ in range(10):
            jax.block_until_ready(f())
    times = {name: [] for name in fns}
    for _ in range(rounds):
        for name, f in fns.items():
            t0 = time.perf_counter()
            jax.block_until_ready(f())
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name, ts in times.items():
        ts.sort()
        out[name] = {"median_us": statistics.median(ts) * 1e6, "p10_us": ts[len(ts) // 10] * 1e6}
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    ap.add_argument("--batch", type=int, default=1, help="batch size of the prediction")
    ap.add_argument("--rounds", type=int, default=3000, help="interleaved calls per function")
    ap.add_argument("--functions", default=",".join(FUNCTIONS),
                    help="comma list of the functions to time (each call runs after the others: fewer "
                    "functions, warmer caches)")
    ap.add_argument("--json", default="bench_results/sweep_anatomy.json", help="where to write the JSON results")
    args = ap.parse_args(argv)
    for name in ("batch", "rounds"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be ≥ 1, got {getattr(args, name)}")
    chosen = [f for f in args.functions.split(",") if f]
    unknown = sorted(set(chosen) - set(FUNCTIONS))
    if unknown or not chosen:
        ap.error(f"--functions: unknown {', '.join(unknown) or '(none given)'}; choose from {', '.join(FUNCTIONS)}")
    load_before = load_avg()
    built = build(args.batch)
    t = time_interleaved({name: built["fns"][name] for name in chosen}, args.rounds)
    thunks = built["body_thunks"]
    shape = built["shape"]
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, load {load_before}; batch {args.batch}: "
          f"{shape['steps']} steps × {shape['lanes']} lanes, step matrices {shape['chi']}×{shape['step_k']} "
          f"({shape['step_matrix_bytes']:,} bytes per step)")
    for name, v in t.items():
        print(f"  {name:14s} median {v['median_us']:8.1f} µs   p10 {v['p10_us']:8.1f} µs")
    base = t["null"]["p10_us"] if "null" in t else 0.0  # dispatch, when timed
    per_step = {name: (t[name]["p10_us"] - base) / shape["steps"] for name in thunks if name in t}
    for name in thunks:
        timed = f"{per_step[name]:.2f} µs per step by p10 ({'less dispatch' if base else 'dispatch included'}), " \
            if name in per_step else ""
        print(f"  {name}: {timed}{thunks[name]} thunks in the loop body")
    copy = None
    if "sweep_gemm" in t and "gemm_fixed_w" in t:
        copy = (t["sweep_gemm"]["p10_us"] - t["gemm_fixed_w"]["p10_us"]) / shape["steps"]
        print(f"  of the GEMM step: {copy:.2f} µs copying the step's matrices out of the stack")
    out = {"benchmark": "anatomy of the planned MPS sweep (fashion_mps student), per call, jitted, "
           "interleaved", "jax_version": jax.__version__, "backend": jax.default_backend(),
           "cpu_count": os.cpu_count(), "load_avg_before": load_before, "load_avg_after": load_avg(),
           "rounds": args.rounds, **shape, "loop_body_thunks": thunks, "timing": t,
           "us_per_step_p10": per_step, "gemm_slice_copy_us_per_step_p10": copy}
    return write_results(args.json, out, "sweep_anatomy.py")


if __name__ == "__main__":
    raise SystemExit(main())
