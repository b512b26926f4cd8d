"""kill -9 a `distill run` at random moments, `--resume` it, and compare with an uninterrupted run.

For each trial: start `distill run CONFIG --out DIR`, send SIGKILL after a random delay (uniform
over the uninterrupted run's duration), then `distill run --resume DIR` until it completes (if
the kill came before anything was staged, the run is simply started again). The results must
equal the uninterrupted run's exactly — every accuracy, KL, parameter count and per-epoch
history — apart from wall-clock figures (wall time, latencies, epoch seconds) and the `resumed`
flag. Prints one line per trial and writes JSON.

    python scripts/kill_resume.py --trials 10 --out bench_results/kill_resume.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SETTINGS = ["--set", "teacher.epochs=6", "--set", "teacher.hidden=[64]", "--set", "distill.epochs=8",
                    "--set", "student.bond_dim=6", "--quiet"]
CLOCK_KEYS = {"wall_time_s", "latency_ms", "latency_us_per_sample", "epoch_s", "resumed"}


def comparable(obj):
    """`obj` without wall-clock figures."""
    if isinstance(obj, dict):
        return {k: comparable(v) for k, v in obj.items() if k not in CLOCK_KEYS}
    if isinstance(obj, list):
        return [comparable(v) for v in obj]
    return obj


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "distill.cli", *args]


def run_to_end(args: list[str], out: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run(cli("run", *args, "--out", str(out)), check=True, cwd=ROOT, capture_output=True)
    return time.perf_counter() - t0


def staged(out: Path) -> bool:
    return any(p.name.startswith(f".{out.name}.partial-") for p in out.parent.iterdir())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", nargs="?", help="experiment YAML (default: the digits quickstart, shortened)")
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0, help="seeds the kill moments")
    ap.add_argument("--out", default="bench_results/kill_resume.json")
    a = ap.parse_args()
    args = ([a.config] if a.config else []) + DEFAULT_SETTINGS
    work = Path(tempfile.mkdtemp(prefix="kill-resume-"))
    rng = random.Random(a.seed)
    try:
        ref_dir = work / "reference"
        duration = run_to_end(args, ref_dir)
        reference = comparable(json.loads((ref_dir / "results.json").read_text()))
        print(f"uninterrupted run: {duration:.1f} s")
        trials = []
        for i in range(a.trials):
            out = work / f"trial{i}"
            delay = rng.uniform(1.0, duration)
            proc = subprocess.Popen(cli("run", *args, "--out", str(out)), cwd=ROOT, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            time.sleep(delay)
            killed = proc.poll() is None
            if killed:
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            resumes = 0
            if not out.exists():
                if staged(out):
                    subprocess.run(cli("run", "--resume", str(out), "--quiet"), check=True, cwd=ROOT,
                                   capture_output=True)
                    resumes = 1
                else:  # killed before the staging folder existed: nothing to resume
                    run_to_end(args, out)
            got = comparable(json.loads((out / "results.json").read_text()))
            same = got == reference
            trials.append({"trial": i, "kill_after_s": round(delay, 2), "killed": killed, "resumes": resumes,
                           "identical": same})
            print(f"trial {i}: kill after {delay:5.1f} s ({'killed' if killed else 'had finished'}), "
                  f"{'resumed' if resumes else 'no resume needed'}: results {'identical' if same else 'DIFFER'}")
            shutil.rmtree(out, ignore_errors=True)
        n_same = sum(t["identical"] for t in trials)
        print(f"{n_same}/{len(trials)} identical to the uninterrupted run")
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"reference_s": duration, "load_avg": os.getloadavg(), "trials": trials,
                                           "identical": n_same, "args": args}, indent=2) + "\n")
        return 0 if n_same == len(trials) else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
