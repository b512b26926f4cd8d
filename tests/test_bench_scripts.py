"""The benchmark scripts that `scripts/gpu_check.sh` runs on an accelerator: they must work on
this CPU first (a device session has minutes, not time to debug). Tiny shapes, values checked
against the definitions the scripts state."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(args, tmp_path):
    out = tmp_path / "out.json"
    proc = subprocess.run([sys.executable, *args, "--json", str(out)], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(out.read_text()), proc.stdout


def test_flops_table_rows_and_auto_pick(tmp_path):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench_contraction as bc
    finally:
        sys.path.pop(0)
    res, stdout = _run(["scripts/bench_contraction.py", "--flops-table", "--shape", "16,2,4,3,8",
                        "--shape", "12,3,4,3,8", "--methods", "scan,tree", "--steps", "2", "--min-steps", "1",
                        "--budget-s", "0.2", "--cpu-devices", "1"], tmp_path)
    table = res["flops_table"]
    rows = table["rows"]
    assert [(r["sites"], r["method"]) for r in rows] == [(16, "scan"), (16, "tree"), (12, "scan"), (12, "tree")]
    # the CPU rule picks the scan at batch 8 (above _tree_max_batch): exactly one starred row per shape
    assert [r["auto_pick"] for r in rows] == [True, False, True, False]
    for r in rows:
        flops = bc.step_flops(r["method"], r["sites"], r["d"], r["chi"], r["outputs"], r["batch"])
        assert r["gflops"] == pytest.approx(r["samples_per_s"] * flops / 1e9)
        assert r["fraction_of_matmul_peak"] == pytest.approx(r["gflops"] / table["matmul_peak_gflops"])
    # scan, d 2, one site per step at batch 8: forward 2·n·d·χ² + output core 2·χ·m·χ, ×3
    assert bc.step_flops("scan", 16, 2, 4, 3, 8) == 3 * (2 * 16 * 2 * 16 + 2 * 4 * 3 * 4)
    assert bc.step_flops("tree", 16, 2, 4, 3, 8) == 3 * (2 * 16 * (2 * 16 + 64) + 2 * 4 * 3 * 4)
    assert "*scan" in stdout


def test_gpu_check_script_is_valid_bash():
    proc = subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_sweep_anatomy_counts_loop_body_operations_and_runs(tmp_path):
    """`loop_body_thunks` counts a compiled loop body's operations (here a body that XLA cannot
    fuse into fewer than two: a dot and the elementwise work after it); the script runs and
    reports the planned sweep's step forms."""
    import jax
    import jax.numpy as jnp

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import sweep_anatomy as sa
    finally:
        sys.path.pop(0)

    def scan(v, w):
        return jax.lax.scan(lambda u, wk: (jnp.tanh(wk @ u), None), v, w)[0]

    hlo = jax.jit(scan).lower(jnp.ones((8,)), jnp.ones((5, 8, 8))).compile().as_text()
    assert 2 <= sa.loop_body_thunks(hlo) <= 8
    with pytest.raises(ValueError, match="no while loop"):
        sa.loop_body_thunks(jax.jit(jnp.tanh).lower(jnp.ones(3)).compile().as_text())
    res, stdout = _run(["scripts/sweep_anatomy.py", "--rounds", "2", "--functions", "null,sweep_matvec,sweep_gemm"],
                       tmp_path)
    assert set(res["timing"]) == {"null", "sweep_matvec", "sweep_gemm"}
    assert res["steps"] == 49 and res["lanes"] == 2 and res["step_k"] == 80
    assert set(res["loop_body_thunks"]) == {"sweep_matvec", "sweep_gemm"}
    assert "thunks in the loop body" in stdout


def test_bench_inference_says_which_is_faster_and_refuses_bad_options():
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import bench_inference as bi
    finally:
        sys.path.pop(0)
    row = {"batch": 1, "mps_planned_over_teacher_median": 0.85, "tt_planned_over_teacher_median": 1.2,
           "mps_over_teacher_median": 4.0}
    lines = bi.verdicts(row, ["teacher", "mps", "mps_planned", "tt_planned"])
    assert len(lines) == 2
    assert "MPS student" in lines[0] and "0.85×" in lines[0] and "faster than the teacher" in lines[0]
    assert "TT student" in lines[1] and "slower than the teacher" in lines[1]
    for bad, msg in ((["--batch", "0"], "must be ≥ 1"), (["--batch", "1,"], "comma list"),
                     (["--students", "foo"], "unknown foo"), (["--rounds", "0"], "--rounds must be")):
        proc = subprocess.run([sys.executable, "scripts/bench_inference.py", *bad], cwd=ROOT, capture_output=True,
                              text=True, timeout=120)
        assert proc.returncode == 2 and msg in proc.stderr and "Traceback" not in proc.stderr
