"""`distill sweep` on a tiny digits CNN: points, baselines at matched budgets, statistics, resume,
one-line config errors."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

from distill.analysis.statistics import holm, t_interval
from distill.cli import main
from distill.config import from_dict
from distill.errors import DistillError
from distill.experiments import checks
from distill.experiments import sweep as sw
from distill.experiments.common import load_data
from distill.nn import param_count
from distill.students.mirror import build_mirror
from distill.train.checkpoint import RunInterrupted

TINY = {
    "name": "tiny_sweep",
    "data": {"name": "digits"},
    "teacher": {"arch": "cnn", "conv_channels": [2, 4], "hidden": [16], "epochs": 6, "batch_size": 64, "lr": 0.01},
    "student": {"family": "tucker", "replace": "all"},
    "distill": {"epochs": 1, "batch_size": 128, "lr": 0.003},
    "sweep": {"families": [{"family": "tucker"}], "compression": [1.5], "seeds": [0, 1]},
}


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory):
    """The tiny sweep stopped after its first two runs (as SIGTERM would), then resumed."""
    cfg = from_dict(TINY)
    out = tmp_path_factory.mktemp("sweep") / "run"
    calls = []
    real = sw._one_run

    def stopping(point, *args, **kw):
        if len(calls) == 2:
            raise RunInterrupted("SIGTERM")
        calls.append(point.name)
        return real(point, *args, **kw)

    mp = pytest.MonkeyPatch()
    mp.setattr(sw, "_one_run", stopping)
    with pytest.raises(RunInterrupted):
        sw.sweep(cfg, out, progress=False)
    mp.undo()
    finished = sorted(p.name for p in out.parent.glob(".run.partial-*/points/*.json"))
    # as if the stopped process had exited: the staging folder of a dead PID is what --resume takes over
    (staging,) = out.parent.glob(".run.partial-*")
    dead = subprocess.Popen(["true"])
    dead.wait()
    staging.rename(staging.with_name(f".run.partial-{dead.pid}"))
    resumed = []

    def counting(point, *args, **kw):
        resumed.append(point.name)
        return real(point, *args, **kw)

    mp.setattr(sw, "_one_run", counting)
    folder, results = sw.sweep(cfg, out, progress=False, resume=True)
    mp.undo()
    return cfg, folder, results, calls, finished, resumed


def test_folder_points_and_matched_baselines(tiny_sweep):
    cfg, folder, results, *_ = tiny_sweep
    for name in ("config.yaml", "results.json", "results.csv", "report.md", "pareto.png", "teacher", "points"):
        assert (folder / name).exists(), name
    assert (folder / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert not list(folder.parent.glob(".*partial*")) and not (folder / "checkpoints").exists()
    assert [p["label"] for p in results["points"]] == ["tucker", "dense", "lowrank"]  # baselines always added
    level = results["levels"][0]
    assert level["target_params"] == round(results["teacher"]["params"] / 1.5)
    data = load_data(cfg)
    teacher = checks.shape_only_teacher(cfg, data.image_shape, data.num_classes)
    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert len(rows) == 3 * 2
    for p in results["points"]:
        assert p["levels"] == ["1.5×"] and abs(p["budget_gap"]["1.5×"]) <= sw.BUDGET_TOLERANCE
        entry = sw.Entry(p["label"], p["family"], {}, None, p["baseline"])
        built = nnx.eval_shape(lambda e=entry, p=p: build_mirror(
            e.family, e.config(cfg, p["size"]).student.options, teacher, seed=0, warm_start=False))
        assert p["params"] == param_count(built) == p["runs"][0]["params"]
        assert [r["seed"] for r in p["runs"]] == [0, 1]
        assert p["replaced_compression"] == pytest.approx(p["replaced_teacher_params"] / p["replaced_params"])
    tucker = results["points"][0]
    assert [row["layer"] for row in tucker["runs"][0]["layers"]] == ["conv_1", "hidden_0"]  # conv replaced
    assert all(np.isfinite(row["r2"]) for row in tucker["runs"][0]["layers"])
    assert {r["label"] for r in rows} == {"tucker", "dense", "lowrank"}


def test_statistics_are_those_of_the_seeds(tiny_sweep):
    _, folder, results, *_ = tiny_sweep
    stored = json.loads((folder / "results.json").read_text())
    t_acc = results["teacher"]["accuracy"]
    for p in stored["points"]:
        acc = [r["accuracy"] for r in p["runs"]]
        iv = t_interval(acc)  # the t-interval, intersected with [0, 1]
        assert (p["accuracy"]["mean"], p["accuracy"]["low"], p["accuracy"]["high"]) == pytest.approx(
            (iv.mean, max(iv.low, 0.0), min(iv.high, 1.0)))
        assert p["drop_pts"]["mean"] == pytest.approx(100 * (t_acc - np.mean(acc)))
        assert p["lossless"] == (p["drop_pts"]["mean"] <= 1.0)
    comps = stored["comparisons"]
    assert [(c["a"], c["b"].split()[0]) for c in comps] == [(f"tucker rank={stored['points'][0]['size']}", "dense"),
                                                             (f"tucker rank={stored['points'][0]['size']}", "lowrank")]
    assert [c["p_holm"] for c in comps] == pytest.approx(holm([c["p"] for c in comps]))
    report = (folder / "report.md").read_text()
    assert "Holm" in report and "Student t-interval" in report and "± 0.00" not in report
    assert "lossless" in report and "Where each family stands" in report


def test_resume_does_not_repeat_finished_runs(tiny_sweep):
    _, _, results, calls, finished, resumed = tiny_sweep
    assert len(calls) == 2 and len(finished) == 2
    assert len(resumed) == 3 * 2 - 2  # the two finished runs were read back
    assert sum(len(p["runs"]) for p in results["points"]) == 6


def test_pareto_front():
    def row(params, mean):
        return {"params": params, "accuracy": {"mean": mean}}

    rows = [row(100, 0.80), row(50, 0.70), row(200, 0.79), row(300, 0.90), row(50, 0.75), row(10, None)]
    assert sw.pareto_front(rows) == [4, 0, 3]  # the 50-parameter 0.70 and the 200-parameter 0.79 are beaten


@pytest.mark.parametrize("sweep_section,match", [
    ({"families": []}, "sweep.families is empty"),
    ({"families": [{"family": "mps"}], "compression": [2]}, r"sweep.families\[0\].family = 'mps' maps pixels"),
    ({"families": [{"family": "cp", "ranks": 3}], "compression": [2]}, r"unknown key 'sweep.families\[0\].ranks'.*"
                                                                       r"did you mean 'sweep.families\[0\].rank'"),
    ({"families": [{"family": "cp", "rank": 3}], "compression": [2]}, r"sweep.families\[0\].rank: the size knob"),
    ({"families": [{"family": "lowrank", "sizes": [2]}], "compression": [2]}, "baseline lowrank is always matched"),
    ({"families": [{"family": "cp"}]}, "sweep.compression is empty and sweep.families\\[0\\] has no sizes"),
    ({"families": [{"family": "tr", "sizes": [0]}]}, r"sweep.families\[0\].sizes = \[0\] is not allowed"),
    ({"families": [{"family": "cp", "cp_iters": 0}], "compression": [2]},
     r"sweep.families\[0\].cp_iters = 0 is not allowed: must be an integer ≥ 1"),
    ({"families": [{"family": "cp"}, {"family": "cp", "sizes": [2]}], "compression": [2]}, "give one of them a"),
])
def test_config_mistakes_are_one_line_errors(sweep_section, match):
    with pytest.raises(DistillError, match=match) as err:
        sw.parse_entries(from_dict({"sweep": sweep_section}))
    assert "\n" not in str(err.value)


def test_cli_refuses_a_config_without_a_sweep(capsys, tmp_path):
    assert main(["sweep", "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("distill: error: config: sweep.families is empty") and "\n" not in err
    assert main(["sweep", "--resume", str(tmp_path / "nothing")]) == 2
    assert "no interrupted run" in capsys.readouterr().err


def test_one_seed_says_no_spread_can_be_given():
    point = {"label": "cp", "family": "cp", "baseline": False, "knob": "rank", "size": 4, "params": 100,
             "compression": 10.0, "replaced_compression": 12.0, "n_ok": 1, "n_failed": 0,
             "accuracy": t_interval([0.9]).as_dict(), "agreement": t_interval([0.95]).as_dict(),
             "kl": t_interval([0.1]).as_dict(), "drop_pts": t_interval([0.5]).as_dict(), "lossless": True,
             "latency_ms": {"1": 0.1, "256": 1.0}, "on_front": True, "runs": [{"seed": 0, "accuracy": 0.9}],
             "levels": [], "budget_gap": {}}
    results = {"name": "x", "dataset": {"name": "digits", "n_train": 1, "n_val": 1, "n_test": 1},
               "teacher": {"accuracy": 0.905, "params": 1000, "architecture": "dense", "source": "here",
                           "latency_ms": {"1": 0.1, "256": 1.0}},
               "distill": {"phases": ["end_to_end"], "epochs": 1}, "seeds": [0], "levels": [],
               "statistics": {"interval": "t", "test": "Welch", "correction": "Holm", "lossless": "≤ 1 pt",
                              "budget_tolerance": 0.1}, "points": [point], "comparisons": [], "wall_time_s": 1.0}
    text = sw.markdown_report(results, "name: x\n")
    assert "no spread can be given" in text and "± 0.00" not in text and "| 90.00 |" in text


def _sweep_result(points: dict, teacher_acc: float = 0.9) -> dict:
    """A minimal results.json with points {(label, size): [accuracy per seed]}."""
    return {"dataset": {"name": "digits"}, "seeds": [0, 1, 2],
            "teacher": {"accuracy": teacher_acc, "params": 1000},
            "points": [{"label": label, "knob": "rank", "size": size, "params": 10 * size,
                        "runs": [{"seed": k, "accuracy": a} for k, a in enumerate(accs)]}
                       for (label, size), accs in points.items()]}


def test_pair_sweeps_is_welch_and_holm_over_common_points():
    from scipy import stats

    kd = _sweep_result({("tt", 4): [0.90, 0.91, 0.92], ("tt", 8): [0.93, 0.935, 0.94], ("cp", 4): [0.5, 0.6, 0.7]})
    labels = _sweep_result({("tt", 4): [0.85, 0.855, 0.86], ("tt", 8): [0.925, 0.93, 0.94]})
    pairs = sw.pair_sweeps(kd, labels)
    assert [(p["label"], p["size"]) for p in pairs] == [("tt", 4), ("tt", 8)]  # cp is only in one
    for p, (a, b) in zip(pairs, [([0.90, 0.91, 0.92], [0.85, 0.855, 0.86]), ([0.93, 0.935, 0.94], [0.925, 0.93, 0.94])]):
        ref = stats.ttest_ind(a, b, equal_var=False)
        assert p["diff"] == pytest.approx(np.mean(a) - np.mean(b), abs=1e-12)
        assert p["p"] == pytest.approx(ref.pvalue, rel=1e-9)
        assert (p["runs_a"], p["runs_b"]) == (a, b)
        ci = ref.confidence_interval(0.95)
        assert (p["low"], p["high"]) == (pytest.approx(ci.low, abs=1e-12), pytest.approx(ci.high, abs=1e-12))
    assert [p["p_holm"] for p in pairs] == pytest.approx(holm([p["p"] for p in pairs]))
    assert pairs[0]["significant"] is True and pairs[1]["significant"] is False


@pytest.mark.parametrize("change, match", [
    (lambda r: r.update(teacher={"accuracy": 0.8, "params": 1000}), "different teachers"),
    (lambda r: r.update(seeds=[0, 1]), "seeds"),
    (lambda r: r.update(points=[]), "share no finished point"),
])
def test_pair_sweeps_refuses_different_experiments(change, match):
    kd = _sweep_result({("tt", 4): [0.90, 0.91, 0.92]})
    labels = _sweep_result({("tt", 4): [0.88, 0.885, 0.89]})
    change(labels)
    with pytest.raises(DistillError, match=match):
        sw.pair_sweeps(kd, labels)


def _fake_run(folder, family="mps", knob="bond_dim", size=8, seed=0, acc=0.9, mode="end_to_end", lr=0.001,
              teacher_acc=0.926):
    import yaml

    folder.mkdir(parents=True)
    cfg = {"name": "x", "seed": seed, "data": {"name": "fashion_mnist"},
           "student": {"family": family, knob: size, "feature_map": "trig"},
           "distill": {"mode": mode, "epochs": 60, "lr": lr}, "augment": {"translate": 0, "flip": False}}
    phases = ["labels"] if mode == "labels_only" else ["end_to_end"]
    res = {"dataset": {"name": "fashion_mnist"}, "teacher": {"accuracy": teacher_acc, "params": 824554},
           "student": {"family": family, "accuracy": acc, "params": 100 * size, "phases": phases}}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    (folder / "results.json").write_text(json.dumps(res))


def _kd_vs_labels():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import kd_vs_labels

    return kd_vs_labels


def test_kd_vs_labels_reads_folders_of_runs(tmp_path, capsys):
    from scipy import stats

    kd_acc = {8: [0.880, 0.884, 0.882], 16: [0.896, 0.899, 0.897]}
    lab_acc = {8: [0.876, 0.878, 0.875], 16: [0.880, 0.884, 0.881]}
    for name, accs, mode in (("kd", kd_acc, "end_to_end"), ("lab", lab_acc, "labels_only")):
        for size, values in accs.items():
            for seed, a in enumerate(values):
                _fake_run(tmp_path / name / f"chi{size}_s{seed}", size=size, seed=seed, acc=a, mode=mode)
    rc = _kd_vs_labels().main([str(tmp_path / "kd"), str(tmp_path / "lab"), "--out", str(tmp_path / "out")])
    assert rc == 0
    pairs = json.loads((tmp_path / "out" / "kd_vs_labels.json").read_text())["pairs"]
    assert [(p["knob"], p["size"]) for p in pairs] == [("bond_dim", 8), ("bond_dim", 16)]
    for p in pairs:
        a, b = kd_acc[p["size"]], lab_acc[p["size"]]
        assert p["diff"] == pytest.approx(np.mean(a) - np.mean(b), abs=1e-12)
        assert p["p"] == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue, rel=1e-9)
    assert [p["meets_min_gain"] for p in pairs] == [False, True]  # +0.57 pt at χ 8, +1.57 pt at χ 16
    assert (tmp_path / "out" / "kd_vs_labels.png").stat().st_size > 10_000


@pytest.mark.parametrize("change, match", [
    ({"lr": 0.002}, "differ in more than the seed"),
    ({"teacher_acc": 0.93}, "another dataset, teacher"),
])
def test_kd_vs_labels_refuses_mixed_run_folders(tmp_path, capsys, change, match):
    for seed in (0, 1):
        _fake_run(tmp_path / "kd" / f"a{seed}", seed=seed)
        _fake_run(tmp_path / "lab" / f"a{seed}", seed=seed, mode="labels_only", acc=0.88)
    _fake_run(tmp_path / "kd" / "b0", seed=2, **change)
    assert _kd_vs_labels().main([str(tmp_path / "kd"), str(tmp_path / "lab")]) == 2
    assert match in capsys.readouterr().err


def _budget_compare():
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import budget_compare

    return budget_compare


def test_budget_compare_best_of_each_side_against_scipy(tmp_path, capsys):
    from scipy import stats

    accs = {("mps", "bond_dim", 100, 0.001): [0.900, 0.904, 0.902],  # 10,000 parameters
            ("mps", "bond_dim", 101, 0.0005): [0.905, 0.909, 0.907],  # 10,100: the best TN
            ("mlp", "width", 99, 0.001): [0.898, 0.899, 0.897],  # 9,900: the best baseline
            ("mlp", "width", 99, 0.0005): [0.890, 0.891, 0.889],
            ("mps", "bond_dim", 400, 0.001): [0.91, 0.912, 0.911],  # 40,000: no baseline near it
            ("mlp", "width", 200, 0.001): [0.92, 0.921, 0.922]}  # 20,000: outside ±10 % of both budgets
    for (family, knob, size, lr), values in accs.items():
        for seed, a in enumerate(values):
            _fake_run(tmp_path / "runs" / f"{family}{size}_{lr}_s{seed}", family=family, knob=knob, size=size,
                      seed=seed, acc=a, lr=lr)
    bc = _budget_compare()
    assert bc.main([str(tmp_path / "runs"), "--budgets", "10000,40000", "--out", str(tmp_path / "out")]) == 0
    res = json.loads((tmp_path / "out" / "budget_compare.json").read_text())
    assert (tmp_path / "out" / "budget_compare.png").read_bytes()[:4] == b"\x89PNG"
    row10, row40 = res["budgets"]
    assert row10["tn"] == "mps distill.lr=0.0005 bond_dim=101" and row10["baseline"] == "mlp distill.lr=0.001 width=99"
    want = stats.ttest_ind([0.905, 0.909, 0.907], [0.898, 0.899, 0.897], equal_var=False)
    c = row10["comparison"]
    assert c["diff"] == pytest.approx(0.009) and c["p"] == pytest.approx(want.pvalue)
    assert row10["p_holm"] == pytest.approx(want.pvalue)  # the only budget with both sides: Holm over one
    assert row10["meets_min_gain"] is True  # +0.9 pt ≥ 0.5, interval above 0
    assert row10["comparison"]["low"] > 0
    assert "comparison" not in row40 and row40["candidates"] == {"tn": ["mps distill.lr=0.001 bond_dim=400"],
                                                                 "baseline": []}
    capsys.readouterr()
    assert bc.main([str(tmp_path / "runs"), "--budgets", "10000", "--min-gain", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "| +0.90 [" in out and out.rstrip().endswith("| no |")  # +0.9 pt < 1.0
    # a gain whose interval reaches below 0 is no win, however large; one seed gives no verdict
    rows = bc.compare([{"family": "mps", "params": 100, "label": "a", "runs": [{"accuracy": a} for a in (0.5, 0.9)]},
                       {"family": "mlp", "params": 100, "label": "b", "runs": [{"accuracy": a} for a in (0.5, 0.6)]}],
                      [100], 0.1, {"mps"}, {"mlp"}, 0.5)
    assert rows[0]["comparison"]["diff"] == pytest.approx(0.15) and rows[0]["comparison"]["low"] < 0
    assert rows[0]["meets_min_gain"] is False
    rows = bc.compare([{"family": "mps", "params": 100, "label": "a", "runs": [{"accuracy": 0.9}]},
                       {"family": "mlp", "params": 100, "label": "b", "runs": [{"accuracy": 0.5}]}],
                      [100], 0.1, {"mps"}, {"mlp"}, 0.5)
    assert rows[0]["meets_min_gain"] is None
    # intervals are clipped to accuracies in [0, 1]
    assert rows[0]["comparison"]["diff"] == pytest.approx(0.4)
    wide = {"family": "mps", "params": 100, "label": "a", "runs": [{"accuracy": a} for a in (0.1, 0.95)]}
    bc.compare([wide], [100], 0.1, {"mps"}, {"mlp"}, 0.5)
    assert wide["interval"]["low"] == 0.0 and wide["interval"]["high"] == 1.0  # the raw t-interval: ±5.4
    # another teacher among the runs: refused in one line
    _fake_run(tmp_path / "runs" / "other", teacher_acc=0.9)
    assert bc.main([str(tmp_path / "runs"), "--budgets", "10000"]) == 2
    assert "another dataset or teacher" in capsys.readouterr().err
    # a run folder without the teacher's record (not a finished run): refused by the shared reader
    (tmp_path / "runs" / "other" / "results.json").write_text(json.dumps({"student": {"family": "mps"}}))
    assert bc.main([str(tmp_path / "runs"), "--budgets", "10000"]) == 2
    assert "not a finished `distill run` folder" in capsys.readouterr().err
