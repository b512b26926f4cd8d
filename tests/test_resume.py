"""Killed and stopped runs: kill -9 → `distill run --resume` gives the uninterrupted results;
SIGTERM saves, exits with one line saying how to resume; a leftover staging folder is named."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

from kill_resume import comparable  # noqa: E402

ARGS = ["--set", "teacher.epochs=4", "--set", "teacher.hidden=[32]", "--set", "distill.epochs=6",
        "--set", "student.bond_dim=4", "--quiet"]


def _cli(*args, **kw):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "distill.cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _wait_for(path_glob, parent: Path, timeout=120):
    t0 = time.time()
    while time.time() - t0 < timeout:
        hits = list(parent.glob(path_glob))
        if hits:
            return hits
        time.sleep(0.05)
    raise AssertionError(f"{path_glob} never appeared in {parent}")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    code, _, err = _finish(_cli("run", *ARGS, "--out", str(out)))
    assert code == 0, err
    return comparable(json.loads((out / "results.json").read_text()))


def test_kill_9_then_resume_equals_the_uninterrupted_run(reference, tmp_path):
    out = tmp_path / "run"
    proc = _cli("run", *ARGS, "--out", str(out))
    # kill once the student's training has written a checkpoint (the teacher is done by then)
    _wait_for(".run.partial-*/checkpoints/0-end_to_end/end_to_end/*", tmp_path)
    proc.send_signal(signal.SIGKILL)
    _finish(proc)
    assert not out.exists() and list(tmp_path.glob(".run.partial-*"))

    # a new run to the same folder names the leftover instead of starting over it
    code, _, err = _finish(_cli("run", *ARGS, "--out", str(out)))
    assert code == 2 and "interrupted run" in err and "--resume" in err and err.count("\n") == 1

    code, _, err = _finish(_cli("run", "--resume", str(out), "--quiet"))
    assert code == 0, err
    assert "resuming" in err
    results = json.loads((out / "results.json").read_text())
    assert results["resumed"] is True
    assert comparable(results) == reference
    assert not list(tmp_path.glob(".run.partial-*")) and not (out / "checkpoints").exists()


def test_sigterm_saves_and_says_how_to_resume(reference, tmp_path):
    out = tmp_path / "run"
    proc = _cli("run", *ARGS, "--out", str(out))
    _wait_for(".run.partial-*/checkpoints/teacher/*", tmp_path)
    proc.send_signal(signal.SIGTERM)
    code, _, err = _finish(proc)
    assert code == 143
    assert err.strip().splitlines()[-1] == (f"distill: SIGTERM received: checkpoint saved; continue with "
                                            f"`distill run --resume {out}`")
    # the time spent before the stop is kept, and the resumed run's wall time adds it: a
    # recorded 1000 s (planted, so that the sum cannot pass by chance) shows in the result
    (recorded,) = tmp_path.glob(".run.partial-*/checkpoints/wall_time.json")
    assert json.loads(recorded.read_text())["wall_time_s"] > 0
    recorded.write_text(json.dumps({"wall_time_s": 1000.0}))
    t_resume = time.perf_counter()
    code, _, err = _finish(_cli("run", "--resume", str(out), "--quiet"))
    resumed_part = time.perf_counter() - t_resume
    assert code == 0, err
    results = json.loads((out / "results.json").read_text())
    assert comparable(results) == reference
    assert 1000.0 < results["wall_time_s"] < 1000.0 + resumed_part


def test_resume_refusals(tmp_path):
    code, _, err = _finish(_cli("run", "--resume", str(tmp_path / "nothing")))
    assert code == 2 and "no interrupted run" in err and err.count("\n") == 1
    code, _, err = _finish(_cli("run", "--resume", str(tmp_path / "x"), "--set", "seed=1"))
    assert code == 2 and "give no CONFIG, --set or --out" in err
