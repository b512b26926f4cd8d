"""Benchmark the MPS contraction: forward + backward of a cross-entropy loss.

For each shape it jits value_and_grad(loss) wrt the cores, compiles it before timing, runs
several repeats and reports the median time, samples/s, XLA's compiled memory analysis
(temp / argument / output bytes) and the process's max RSS. Prints a table and writes JSON.

    python scripts/bench_mps.py                     # default shapes, JSON to bench_results/
    python scripts/bench_mps.py --repeats 20 --json /tmp/b.json
    python scripts/bench_mps.py --compare           # fused scan at 1 and 2 sites per step vs the previous scan
    python scripts/bench_mps.py --shape 784,2,20,10,256   # sites,d,chi,outputs,batch
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from distill.tn import mps  # noqa: E402
from distill.tn.feature_maps import trig  # noqa: E402

DEFAULT_SHAPES = [(784, 3, 10, 10, 500), (196, 2, 32, 10, 256)]


def max_rss_bytes() -> int:
    # ru_maxrss is KiB on Linux, bytes on macOS
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if sys.platform == "darwin" else rss * 1024


def bench_shape(sites, d, chi, outputs, batch, *, repeats, variant=None, seed=0):
    """variant: None (contract's automatic choice), "scan_autodiff" (the previous scan:
    autodiff of lax.scan), or "scan/k" (the fused scan with k sites per step)."""
    params = mps.init_mps(jax.random.key(seed), sites, d, chi, outputs)
    rng = np.random.default_rng(seed)
    x = jnp.asarray(rng.uniform(size=(batch, sites)), jnp.float32)
    y = jnp.asarray(rng.integers(0, outputs, batch))

    def loss(p, x, y):
        if variant is None:
            z, _ = mps.contract(p, trig(x, d))
        elif variant == "scan_autodiff":
            z, _ = mps._contract_impl(p, trig(x, d), method="scan_autodiff")
        else:
            z, _ = mps._contract_impl(p, trig(x, d), method="scan",
                                      sites_per_step=int(variant.split("/")[1]))
        return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

    t0 = time.perf_counter()
    compiled = jax.jit(jax.value_and_grad(loss)).lower(params, x, y).compile()
    compile_s = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    jax.block_until_ready(compiled(params, x, y))  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        jax.block_until_ready(compiled(params, x, y))
        times.append(time.perf_counter() - t)
    med = statistics.median(times)
    return {
        "sites": sites, "d": d, "chi": chi, "outputs": outputs, "batch": batch,
        "variant": variant or mps.choose_method(sites, d, chi, batch),
        "num_params": mps.num_params(params),
        "samples_per_s": batch / med,
        "median_ms": med * 1e3,
        "min_ms": min(times) * 1e3,
        "repeats": repeats,
        "compile_s": compile_s,
        "xla_temp_bytes": int(getattr(mem, "temp_size_in_bytes", -1)) if mem else None,
        "xla_argument_bytes": int(getattr(mem, "argument_size_in_bytes", -1)) if mem else None,
        "xla_output_bytes": int(getattr(mem, "output_size_in_bytes", -1)) if mem else None,
        "max_rss_bytes": max_rss_bytes(),
    }


def parse_shape(text: str):
    parts = [int(v) for v in text.split(",")]
    if len(parts) != 5:
        raise argparse.ArgumentTypeError("shape must be sites,d,chi,outputs,batch")
    return tuple(parts)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description="Benchmark MPS forward+backward (jitted value_and_grad of a cross-entropy "
        "loss wrt the cores): median time, samples/s, XLA memory analysis, max RSS.",
    )
    ap.add_argument("--shape", type=parse_shape, action="append",
                    help="sites,d,chi,outputs,batch (repeatable); default: "
                    + " and ".join(",".join(map(str, s)) for s in DEFAULT_SHAPES))
    ap.add_argument("--repeats", type=int, default=10, help="timed repeats per shape (median)")
    ap.add_argument("--compare", action="store_true",
                    help="time the fused scan at 1 and 2 sites per step and the previous "
                    "(autodiff) scan per shape")
    ap.add_argument("--json", default="bench_results/bench_mps.json",
                    help="where to write the JSON results (folder is created)")
    args = ap.parse_args(argv)

    shapes = args.shape or DEFAULT_SHAPES
    variants = ["scan/1", "scan/2", "scan_autodiff"] if args.compare else [None]
    rows = []
    for shape in shapes:
        for var in variants:
            rows.append(bench_shape(*shape, repeats=args.repeats, variant=var))

    hdr = (f"{'sites':>6} {'d':>2} {'chi':>4} {'out':>4} {'batch':>6} {'variant':>13} "
           f"{'median ms':>10} {'samples/s':>10} {'xla temp MB':>12} {'args+out MB':>12} "
           f"{'max RSS MB':>11}")
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, "
          f"devices {jax.devices()}, cpus {os.cpu_count()}")
    print(hdr)
    for r in rows:
        io_mb = ((r["xla_argument_bytes"] or 0) + (r["xla_output_bytes"] or 0)) / 2**20
        print(f"{r['sites']:>6} {r['d']:>2} {r['chi']:>4} {r['outputs']:>4} {r['batch']:>6} "
              f"{r['variant']:>13} {r['median_ms']:>10.1f} {r['samples_per_s']:>10.0f} "
              f"{(r['xla_temp_bytes'] or 0) / 2**20:>12.2f} {io_mb:>12.2f} "
              f"{r['max_rss_bytes'] / 2**20:>11.0f}")

    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({
        "benchmark": "mps value_and_grad(cross-entropy), float32",
        "jax_version": jax.__version__,
        "backend": jax.default_backend(),
        "device": str(jax.devices()[0]),
        "cpu_count": os.cpu_count(),
        "platform": platform.platform(),
        "results": rows,
    }, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
