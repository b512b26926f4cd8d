"""Training-step throughput of our MPS contraction against TensorKrowch and TensorNetwork.

One training step = forward + backward + Adam update of an MPS classifier (poly feature map,
cross-entropy) on a batch. Every system is warmed up (compile / trace) first, then timed for
up to `--steps` steps or `--budget-s` seconds (at least `--min-steps`); the median step time
gives samples/s. Systems:

  ours[M, N devices]       distill.tn.mps.contract(method=M) under one jitted optax step,
                           data-parallel over the N = --cpu-devices CPU devices (default: one
                           per core, as distill's training loop with runtime.cpu_devices)
                           when the batch splits evenly (else ours[M], one device); "ours"
                           (samples_per_s_ours, speedup_vs_*) is the method
                           `contract(method=None)` picks here, run that way
  ours[M, 1 device]        the same step for the picked method on one device
                           (speedup_vs_tensorkrowch_one_device)
  tensorkrowch             tk.models.MPSLayer(n_features=sites+1, in_dim=d, out_dim=outputs,
                           bond_dim=chi), tk.embeddings.poly, auto_stack=True,
                           auto_unbind=False, model.trace(example) first, torch.optim.Adam,
                           torch threads = --threads (its docs' recommended fast setup)
  tensornetwork            tensornetwork.ncon on the JAX backend: the whole network of one
                           sample (cores + φ vectors) in one ncon, vmapped over the batch,
                           jitted with optax Adam (no renormalisation: ncon has none)

Every system gets the same inputs: the poly features are embedded once before timing (as
TensorKrowch's setup does; TensorNetwork's per-sample ncon embeds inside its step). Peers
that are not installed are skipped with a note. Prints a table of samples/s and ratios
and writes JSON (one entry per shape).

    python scripts/bench_contraction.py                       # the three default shapes
    python scripts/bench_contraction.py --shape 784,3,10,10,500 --steps 10
    python scripts/bench_contraction.py --scaling --plot docs/bench/scaling.png
    python scripts/bench_contraction.py --compile-times 196,784,4096   # first-step compile
    python scripts/bench_contraction.py --flops-table                  # samples/s, % of GEMM peak
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
import optax  # noqa: E402

from distill.tn import mps  # noqa: E402
from distill.tn.feature_maps import poly  # noqa: E402
from distill.train.sharding import data_mesh, replicate, shard_batch, use_cpu_devices  # noqa: E402

from bench_mps import parse_shape  # noqa: E402  (scripts/ is on sys.path: this file's folder)

DEFAULT_SHAPES = [(784, 3, 10, 10, 500), (196, 2, 32, 10, 256), (784, 2, 64, 10, 128)]
OUR_METHODS = ("scan", "chunked", "tree")


def load_avg() -> list[float]:
    return [round(v, 2) for v in os.getloadavg()]


def time_steps(step, *, steps, min_steps, budget_s):
    """Warm up (compiles / traces), then time up to `steps` calls within `budget_s`. Two warm-up
    calls: a data-parallel step's outputs come back with the shardings XLA chose, and the
    second call compiles once more for those (2 s at a small shape)."""
    t0 = time.perf_counter()
    step()
    step()
    warmup_s = time.perf_counter() - t0
    times = []
    start = time.perf_counter()
    while len(times) < steps and (len(times) < min_steps or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    return {"median_s": statistics.median(times), "min_s": min(times), "steps": len(times),
            "warmup_s": warmup_s}


def make_data(sites, outputs, batch, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(size=(batch, sites)).astype(np.float32)
    y = rng.integers(0, outputs, batch)
    return x, y


def adam_runner(loss, params, x, y, lr, mesh=None):
    """A zero-argument runner of one jitted forward+backward+Adam step of loss(params, x, y).
    With a `mesh`: data-parallel as distill's training loop runs it (x, y split over the mesh's
    devices, params and optimiser state replicated, the mesh in context)."""
    opt = optax.adam(lr)
    if mesh is not None:
        x, y = shard_batch({"x": x, "y": y}, mesh).values()
        params = replicate(params, mesh)

    @jax.jit
    def step(p, s, x, y):
        l, g = jax.value_and_grad(loss)(p, x, y)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, l

    state = {"p": params, "s": opt.init(params)}

    def run():
        with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
            state["p"], state["s"], l = step(state["p"], state["s"], x, y)
        jax.block_until_ready(l)
        return l

    return run


# --------------------------------------------------------------------------- ours


def ours_step(sites, d, chi, outputs, batch, method, lr=1e-3, mesh=None):
    """A jitted forward+backward+Adam step on MPSParams (data-parallel over `mesh` when given);
    returns a zero-argument runner."""
    params = mps.init_mps(jax.random.key(0), sites, d, chi, outputs)
    x, y = make_data(sites, outputs, batch)
    phi, y = poly(jnp.asarray(x), d), jnp.asarray(y)  # embedded once, as for TensorKrowch

    def loss(p, phi, y):
        z, _ = mps.contract(p, phi, method=method)
        return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

    return adam_runner(loss, params, phi, y, lr, mesh)


def ours_forward_backward(sites, d, chi, outputs, batch, method):
    """Jitted value_and_grad only (the scaling study)."""
    params = mps.init_mps(jax.random.key(0), sites, d, chi, outputs)
    x, y = make_data(sites, outputs, batch)
    x, y = jnp.asarray(x), jnp.asarray(y)

    def loss(p):
        z, _ = mps.contract(p, poly(x, d), method=method)
        return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

    f = jax.jit(jax.value_and_grad(loss))
    return lambda: jax.block_until_ready(f(params))


def compile_time(sites, d, chi, outputs, batch, method=None):
    """Seconds to trace, lower and compile the jitted forward+backward+Adam step (no run)."""
    params = mps.init_mps(jax.random.key(0), sites, d, chi, outputs)
    opt = optax.adam(1e-3)
    x, y = make_data(sites, outputs, batch)
    x, y = jnp.asarray(x), jnp.asarray(y)

    def step(p, s, x, y):
        def loss(p):
            z, _ = mps.contract(p, poly(x, d), method=method)
            return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

        l, g = jax.value_and_grad(loss)(p)
        upd, s = opt.update(g, s, p)
        return optax.apply_updates(p, upd), s, l

    t0 = time.perf_counter()
    jax.jit(step).lower(params, opt.init(params), x, y).compile()
    return time.perf_counter() - t0


def step_flops(method, sites, d, chi, outputs, batch):
    """FLOPs of one training step per sample (forward + backward ≈ 3 forward passes).

    Forward: "scan" 2·n·d^k/k·χ² (k sites merged per step) and the output core; "tree" /
    "chunked" also 2·n·χ³ for the matrix products.
    """
    if method == "scan":
        k = mps._sites_per_step(d, chi, batch)
        fwd = 2.0 * sites * d**k / k * chi * chi
    else:
        fwd = 2.0 * sites * (d * chi * chi + chi**3)
    return 3.0 * (fwd + 2.0 * chi * outputs * chi)


def flops_table(args, shapes, methods):
    """samples/s, achieved GFLOP/s and the fraction of the float32 GEMM peak, ours only."""
    n = 8192 if jax.default_backend() != "cpu" else 2048
    peak = matmul_peak_gflops(n)
    print(f"float32 GEMM {n}³ on {jax.devices()[0].device_kind}: {peak:,.1f} GFLOP/s")
    rows = []
    for shape in shapes:
        sites, d, chi, outputs, batch = shape
        picked = mps.choose_method(sites, d, chi, batch)  # the automatic rule on this backend
        for method in methods:
            run = ours_step(*shape, method=method)
            t = time_steps(run, steps=args.steps, min_steps=args.min_steps, budget_s=args.budget_s)
            sps = batch / t["median_s"]
            gflops = sps * step_flops(method, sites, d, chi, outputs, batch) / 1e9
            rows.append({"sites": sites, "d": d, "chi": chi, "outputs": outputs, "batch": batch,
                         "method": method, "auto_pick": method == picked,
                         "samples_per_s": sps, "gflops": gflops,
                         "fraction_of_matmul_peak": gflops / peak, "warmup_s": t["warmup_s"],
                         "load_avg": load_avg()})
    print(f"\n{'sites':>5} {'d':>2} {'chi':>4} {'batch':>5} {'method':>8} {'samples/s':>12} "
          f"{'GFLOP/s':>9} {'of peak':>8} {'compile+1st':>11}")
    for r in rows:
        method = ("*" if r["auto_pick"] else "") + r["method"]
        print(f"{r['sites']:>5} {r['d']:>2} {r['chi']:>4} {r['batch']:>5} {method:>8} "
              f"{r['samples_per_s']:>12,.0f} {r['gflops']:>9.2f} "
              f"{100 * r['fraction_of_matmul_peak']:>7.2f}% {r['warmup_s']:>10.1f}s")
    print("* the method contract(method=None) picks on this backend (mps.choose_method)")
    return {"matmul_peak_gflops": peak, "matmul_n": n, "rows": rows}


# --------------------------------------------------------------------------- TensorKrowch


def tensorkrowch_step(sites, d, chi, outputs, batch, threads, lr=1e-3):
    import tensorkrowch as tk
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = tk.models.MPSLayer(n_features=sites + 1, in_dim=d, out_dim=outputs, bond_dim=chi,
                               init_method="randn_eye", std=1e-9)
    model.auto_stack = True
    model.auto_unbind = False
    x, y = make_data(sites, outputs, batch)
    x = tk.embeddings.poly(torch.from_numpy(x), degree=d - 1)  # (B, sites, d)
    y = torch.from_numpy(y)
    model.trace(torch.zeros(1, sites, d))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()

    def run():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()
        return loss.item()

    return run


# --------------------------------------------------------------------------- TensorNetwork


def tensornetwork_step(sites, d, chi, outputs, batch, lr=1e-3):
    import tensornetwork as tn

    params = mps.init_mps(jax.random.key(0), sites, d, chi, outputs)
    n, k = sites, mps.mps_dims(params).output_site
    # Labels in the order ncon contracts them: left half from site 0, then the right half
    # from site n-1, then the two bonds of the output core (so the open leg `o` comes last).
    nxt = [1]

    def new():
        nxt[0] += 1
        return nxt[0] - 1

    phys = {}
    bond = {}  # bond s sits between site s-1 and s (s = 1..n-1); output core between k-1, k
    for s in range(0, k):
        phys[s] = new()
        if s < k - 1:
            bond[s + 1] = new()
    for s in range(n - 1, k - 1, -1):
        phys[s] = new()
        if s > k:
            bond[s] = new()
    bond_l, bond_r = new(), new()
    core_labels = [[phys[0], bond[1] if k > 1 else bond_l]]
    for s in range(1, k):
        core_labels.append([phys[s], bond[s], bond[s + 1] if s < k - 1 else bond_l])
    core_labels.append([bond_l, -1, bond_r])
    for s in range(k, n - 1):
        core_labels.append([phys[s], bond_r if s == k else bond[s], bond[s + 1]])
    core_labels.append([phys[n - 1], bond[n - 1] if n - 1 > k else bond_r])
    vec_labels = [[phys[s]] for s in range(n)]

    def one_sample(p, phi):  # phi (n, d) → (m,)
        cores = ([p.first] + [p.left[i] for i in range(k - 1)] + [p.out]
                 + [p.right[i] for i in range(n - k - 1)] + [p.last])
        vecs = [phi[s] for s in range(n)]
        return tn.ncon(cores + vecs, core_labels + vec_labels, backend="jax")

    x, y = make_data(sites, outputs, batch)
    x, y = jnp.asarray(x), jnp.asarray(y)

    def loss(p, x, y):
        z = jax.vmap(one_sample, in_axes=(None, 0))(p, poly(x, d))
        return optax.softmax_cross_entropy_with_integer_labels(z, y).mean()

    return adam_runner(loss, params, x, y, lr)


def peer_available(module: str) -> str | None:
    try:
        __import__(module)
        return None
    except Exception as e:  # noqa: BLE001 - report why the peer is skipped
        return f"{type(e).__name__}: {e}"


# --------------------------------------------------------------------------- main bench


def bench_shape(shape, args, methods, notes):
    sites, d, chi, outputs, batch = shape
    auto = mps.choose_method(sites, d, chi, batch)
    row = {"sites": sites, "d": d, "chi": chi, "outputs": outputs, "batch": batch,
           "auto_method": auto, "load_avg_before": load_avg(), "timing": {}}
    sps = {}
    mesh = data_mesh()
    n_dev = mesh.devices.size if batch % mesh.devices.size == 0 else 1
    row["devices"] = n_dev
    # "ours[m]": data-parallel over every device (with runtime.cpu_devices = cores, what distill's
    # training loop does on a CPU); "ours[m, 1 device]": the same step on one device
    split = f", {n_dev} devices" if n_dev > 1 else ""
    if n_dev == 1 and mesh.devices.size > 1:
        notes.add(f"batch {batch} does not split over {mesh.devices.size} devices: ours on one device")
    todo = [(f"ours[{m}{split}]", lambda m=m: ours_step(*shape, method=m, mesh=mesh if n_dev > 1 else None))
            for m in methods]
    if n_dev > 1:
        todo.append((f"ours[{auto}, 1 device]", lambda: ours_step(*shape, method=auto)))
    if "tensorkrowch" not in args.skip:
        if (why := peer_available("tensorkrowch")) is None:
            todo.append(("tensorkrowch", lambda: tensorkrowch_step(*shape, args.threads)))
        else:
            notes.add(f"tensorkrowch skipped: not importable ({why})")
    n_params = d * chi * chi * sites
    if "tensornetwork" not in args.skip and n_params > args.tn_max_params:
        notes.add(f"tensornetwork skipped above --tn-max-params {args.tn_max_params:,} core "
                  "parameters: XLA's compile of the fully unrolled per-sample ncon (one dot per "
                  "tensor) had not finished after 4 minutes at 784,2,64,10,128 on 2 cores")
        row["tensornetwork_skipped"] = True
    elif "tensornetwork" not in args.skip:
        if (why := peer_available("tensornetwork")) is None:
            todo.append(("tensornetwork", lambda: tensornetwork_step(*shape)))
        else:
            notes.add(f"tensornetwork skipped: not importable ({why})")
    for name, make in todo:
        print(f"  {shape} {name} ...", end="", flush=True)
        t0 = time.perf_counter()
        run = make()
        setup_s = time.perf_counter() - t0
        budget = args.budget_s * (0.25 if "tree" in name else 1.0)
        t = time_steps(run, steps=args.steps, min_steps=args.min_steps, budget_s=budget)
        t["setup_s"] = setup_s
        row["timing"][name] = t
        sps[name] = batch / t["median_s"]
        print(f" {sps[name]:,.0f} samples/s ({t['steps']} steps, warm-up {t['warmup_s']:.1f}s)")
    row["samples_per_s"] = {k: round(v, 1) for k, v in sps.items()}
    row["samples_per_s_ours"] = sps.get(f"ours[{auto}{split}]")
    tk = sps.get("tensorkrowch")
    ours = row["samples_per_s_ours"]
    row["samples_per_s_tensorkrowch"] = tk
    row["samples_per_s_tensornetwork"] = sps.get("tensornetwork")
    row["speedup_vs_tensorkrowch"] = ours / tk if (ours and tk) else None
    one = sps.get(f"ours[{auto}, 1 device]", ours if n_dev == 1 else None)
    row["speedup_vs_tensorkrowch_one_device"] = one / tk if (one and tk) else None
    tnv = sps.get("tensornetwork")
    row["speedup_vs_tensornetwork"] = ours / tnv if (ours and tnv) else None
    row["load_avg_after"] = load_avg()
    return row


def print_table(rows):
    names = []
    for r in rows:
        names += [k for k in r["samples_per_s"] if k not in names]
    hdr = f"{'sites':>5} {'d':>2} {'chi':>4} {'out':>4} {'batch':>5} {'auto':>7} " + " ".join(
        f"{n:>15}" for n in names) + f" {'ours/TK':>8} {'ours/TN':>8}"
    print("\nsamples/s (forward + backward + Adam step), median over timed steps")
    print(hdr)
    for r in rows:
        cells = " ".join(
            f"{r['samples_per_s'][n]:>15,.0f}" if n in r["samples_per_s"] else f"{'-':>15}"
            for n in names)
        tk = r["speedup_vs_tensorkrowch"]
        tnr = r["speedup_vs_tensornetwork"]
        print(f"{r['sites']:>5} {r['d']:>2} {r['chi']:>4} {r['outputs']:>4} {r['batch']:>5} "
              f"{r['auto_method']:>7} {cells} {f'{tk:.1f}x' if tk else '-':>8} "
              f"{f'{tnr:.1f}x' if tnr else '-':>8}")


# --------------------------------------------------------------------------- scaling


def fit_exponent(xs, ts, upper_from):
    sel = [(x, t) for x, t in zip(xs, ts) if x >= upper_from]
    lx, lt = np.log([s[0] for s in sel]), np.log([s[1] for s in sel])
    slope, _ = np.polyfit(lx, lt, 1)
    return float(slope), [s[0] for s in sel]


def tree_flops(sites, d, chi, outputs, batch):
    """Multiply-adds ×2 of one tree forward pass: site matrices B·n·d·χ², pairwise products
    B·(n-2)·χ³ (a binary tree over the n-2 bulk sites has n-3 products), the output core."""
    return 2.0 * batch * (sites * d * chi * chi + (sites - 2) * chi**3 + chi * outputs * chi)


def matmul_peak_gflops(n=2048, steps=5):
    """This machine's float32 GEMM rate (n×n @ n×n, jitted): the ceiling for the tree's products."""
    a = jnp.ones((n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        f(a).block_until_ready()
        times.append(time.perf_counter() - t0)
    return 2.0 * n**3 / float(np.median(times)) / 1e9


def scaling_study(args):
    res = {"batch": args.scaling_batch, "d": 2, "outputs": 10, "series": []}
    specs = [
        # (varied, method, fixed chi / sites, values, fit from, theory, batch)
        # sites: fitted from 2048 up, past the step where the scan's saved residuals (B·n·χ
        # floats, 16 MB at n 2048) leave the CPU caches: one doubling there costs 3×, not 2×
        # (at 1024 → 2048 on a quiet 2-core box, at 512 → 1024 under load)
        ("sites", "scan", 16, [64, 128, 256, 512, 1024, 2048, 4096, 8192], 2048, 1.0, args.scaling_batch),
        ("chi", "scan", 256, [4, 8, 16, 32, 64, 128], 32, 2.0, args.scaling_batch),
        # tree: the χ³ products only dominate, and run at a steady GEMM rate, for large χ; a
        # short chain and a small batch keep large χ affordable
        ("chi", "tree", args.tree_sites, args.tree_chis, args.tree_fit_from, 3.0, args.tree_batch),
    ]
    if "tree" in args.scaling_series:
        res["matmul_peak_gflops"] = matmul_peak_gflops()
        print(f"  float32 GEMM 2048³: {res['matmul_peak_gflops']:.1f} GFLOP/s")
    for varied, method, fixed, values, fit_from, theory, batch in specs:
        if method not in args.scaling_series:
            continue
        ts = []
        for v in values:
            sites, chi = (v, fixed) if varied == "sites" else (fixed, v)
            run = ours_forward_backward(sites, 2, chi, 10, batch, method)
            t = time_steps(run, steps=args.steps, min_steps=3, budget_s=args.budget_s / 2)
            ts.append(t["median_s"])
            print(f"  scaling {method} {varied}={v} (sites {sites}, chi {chi}, batch {batch}): "
                  f"{t['median_s'] * 1e3:.2f} ms", flush=True)
        slope, used = fit_exponent(values, ts, fit_from)
        slope_half, used_half = fit_exponent(values, ts, values[len(values) // 2])
        entry = {
            "varied": varied, "method": method, "batch": batch,
            "fixed": {"chi": fixed} if varied == "sites" else {"sites": fixed},
            "values": values, "median_s": ts, "fit_over": used,
            "exponent": slope, "theory": theory,
            "exponent_upper_half": slope_half, "upper_half": used_half,
            "rel_error": abs(slope - theory) / theory,
        }
        if method == "tree":
            # forward + backward ≈ 3 forward passes of GEMM work
            entry["gflops"] = [3 * tree_flops(fixed, 2, c, 10, batch) / t / 1e9 for c, t in zip(values, ts)]
            entry["fraction_of_matmul_peak"] = [g / res["matmul_peak_gflops"] for g in entry["gflops"]]
            print("  tree GFLOP/s (fwd+bwd ≈ 3× forward): "
                  + ", ".join(f"χ {c}: {g:.1f}" for c, g in zip(values, entry["gflops"])))
        res["series"].append(entry)
        print(f"  → {method} time ∝ {varied}^{slope:.2f} (theory {theory:g}, fit over {used}; "
              f"upper half {used_half}: {slope_half:.2f})")
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
        for s in res["series"]:
            ax = axes[0] if s["varied"] == "sites" else axes[1]
            ax.loglog(s["values"], s["median_s"], "o-",
                      label=f"{s['method']}: slope {s['exponent']:.2f} (theory {s['theory']:g})")
            # theory line anchored at the last point
            xv = np.asarray(s["fit_over"], float)
            ax.loglog(xv, s["median_s"][-1] * (xv / xv[-1]) ** s["theory"], "k:", lw=1)
        axes[0].set(xlabel="sites n (χ = 16)", ylabel="forward+backward time [s]")
        axes[1].set(xlabel=f"bond dimension χ (scan: n = 256, batch {args.scaling_batch}; "
                           f"tree: n = {args.tree_sites}, batch {args.tree_batch})")
        for ax in axes:
            ax.legend(fontsize=8)
            ax.grid(True, which="both", alpha=0.3)
        fig.suptitle(f"distill MPS forward+backward, d = 2, "
                     f"{jax.default_backend()}, {os.cpu_count()} cores (dotted: theory slope)")
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot, dpi=110)
        print(f"wrote {args.plot}")
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] + " Times forward+backward+Adam per system and "
        "shape (warm-up, then the median of up to --steps steps within --budget-s), prints "
        "samples/s and the ratios ours/TensorKrowch and ours/TensorNetwork, writes JSON.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    ap.add_argument("--shape", type=parse_shape, action="append",
                    help="sites,d,chi,outputs,batch (repeatable); default: "
                    + " ".join(",".join(map(str, s)) for s in DEFAULT_SHAPES))
    ap.add_argument("--methods", default=",".join(OUR_METHODS),
                    help="our contraction methods to time (comma list of scan,tree,chunked); "
                    "the auto choice is always included")
    ap.add_argument("--skip", default="", help="peers to skip: tensorkrowch,tensornetwork")
    ap.add_argument("--steps", type=int, default=10, help="max timed steps per system")
    ap.add_argument("--min-steps", type=int, default=2, help="min timed steps per system")
    ap.add_argument("--budget-s", type=float, default=20.0,
                    help="time budget per system and shape for the timed steps (tree: 1/4)")
    ap.add_argument("--tn-max-params", type=int, default=1_000_000,
                    help="skip TensorNetwork above this many core parameters (sites·d·χ²): "
                    "its unrolled ncon graph compiles for minutes")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for TensorKrowch")
    ap.add_argument("--cpu-devices", type=int, default=os.cpu_count(),
                    help="CPU devices JAX exposes (distill's runtime.cpu_devices); our step runs "
                    "data-parallel over all devices and is also timed on one")
    ap.add_argument("--json", default="bench_results/bench_contraction.json",
                    help="where to write the JSON results (folder is created)")
    ap.add_argument("--scaling", action="store_true",
                    help="run the scaling study (time vs sites and vs χ, log-log fits) instead")
    ap.add_argument("--scaling-batch", type=int, default=128, help="batch for the scan series of --scaling")
    ap.add_argument("--scaling-series", default="scan,tree",
                    help="which --scaling series to run (comma list of scan,tree)")
    ap.add_argument("--tree-sites", type=int, default=16, help="chain length of the tree series of --scaling")
    ap.add_argument("--tree-batch", type=int, default=16, help="batch of the tree series of --scaling")
    ap.add_argument("--tree-chis", type=lambda t: [int(v) for v in t.split(",")],
                    default=[8, 16, 32, 64, 128, 256, 384, 512], help="χ values of the tree series")
    ap.add_argument("--tree-fit-from", type=int, default=128,
                    help="fit the tree exponent over χ ≥ this (where the products dominate)")
    ap.add_argument("--plot", default=None, help="PNG path for the --scaling plot")
    ap.add_argument("--flops-table", action="store_true",
                    help="instead: ours only, per shape and --methods: samples/s, GFLOP/s and "
                    "the fraction of this device's float32 GEMM rate")
    ap.add_argument("--compile-times", type=lambda t: [int(v) for v in t.split(",")], default=None,
                    help="instead: first-step compile time (trace+lower+compile of the training "
                    "step) at these chain lengths, d/χ/outputs/batch of the first --shape")
    args = ap.parse_args(argv)
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    args.scaling_series = {s.strip() for s in args.scaling_series.split(",") if s.strip()}
    if not args.scaling_series <= {"scan", "tree"}:
        ap.error(f"--scaling-series takes scan and/or tree, got {sorted(args.scaling_series)}")
    if args.cpu_devices < 1:
        ap.error(f"--cpu-devices must be ≥ 1, got {args.cpu_devices}")
    use_cpu_devices(args.cpu_devices)  # before the first JAX computation

    env = {"jax_version": jax.__version__, "backend": jax.default_backend(),
           "device": str(jax.devices()[0]), "devices": len(jax.devices()), "cpu_count": os.cpu_count(),
           "platform": platform.platform(), "load_avg_start": load_avg()}
    print(f"jax {jax.__version__}, backend {env['backend']}, cpus {env['cpu_count']}, "
          f"load {env['load_avg_start']}")
    if args.flops_table:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        out = {"benchmark": "MPS training step: samples/s and fraction of the float32 GEMM peak",
               **env, "flops_table": flops_table(args, args.shape or DEFAULT_SHAPES, methods),
               "load_avg_end": load_avg()}
    elif args.compile_times:
        sites_, d, chi, outputs, batch = (args.shape or DEFAULT_SHAPES)[0]
        rows = []
        for n in args.compile_times:
            jax.clear_caches()
            t = compile_time(n, d, chi, outputs, batch)
            rows.append({"sites": n, "d": d, "chi": chi, "outputs": outputs, "batch": batch,
                         "method": mps.choose_method(n, d, chi, batch), "compile_s": t,
                         "load_avg": load_avg()})
            print(f"  compile {n} sites (d {d}, χ {chi}, batch {batch}): {t:.2f} s", flush=True)
        out = {"benchmark": "first-step compile time of the MPS training step", **env,
               "compile_times": rows, "load_avg_end": load_avg()}
    elif args.scaling:
        out = {"benchmark": "distill MPS forward+backward scaling", **env,
               "scaling": scaling_study(args), "load_avg_end": load_avg()}
    else:
        methods = [m.strip() for m in args.methods.split(",") if m.strip()]
        notes: set[str] = set()
        rows = []
        for shape in args.shape or DEFAULT_SHAPES:
            ms = list(dict.fromkeys([mps.choose_method(shape[0], shape[1], shape[2], shape[4])]
                                    + methods))
            rows.append(bench_shape(shape, args, ms, notes))
            write_json(args.json, {**env, "partial": True, "results": rows})
        print_table(rows)
        for note in sorted(notes):
            print("note:", note)
        try:
            import torch
            import tensorkrowch
            env["torch_version"], env["tensorkrowch_version"] = torch.__version__, tensorkrowch.__version__
        except Exception:  # noqa: BLE001
            pass
        try:
            from importlib.metadata import version
            env["tensornetwork_version"] = version("tensornetwork-ng")
        except Exception:  # noqa: BLE001
            pass
        out = {"benchmark": "MPS classifier training step (forward+backward+Adam), float32, "
               "poly feature map, uniform random inputs", **env, "notes": sorted(notes),
               "results": rows, "load_avg_end": load_avg()}
    write_json(args.json, out)
    print(f"wrote {args.json}")
    return 0


def write_json(path, obj):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2))


if __name__ == "__main__":
    raise SystemExit(main())
