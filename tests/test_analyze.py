"""`distill analyze` on a short digits run whose MPS student was trained by DMRG-style sweeps
(phase `sweep`, random site order): the analysis reports the student's entanglement, truncation
curve and the teacher's weight entanglement with values that match their definitions; the swept
student reloads and reproduces its outputs; CLI errors are one line."""

import json

import numpy as np
import pytest

from distill import cli
from distill.analysis.weight_entanglement import weight_entanglement
from distill.config import load_config
from distill.data.orderings import site_order
from distill.errors import DistillError
from distill.experiments import analyze as analyze_lib
from distill.experiments import run as pipeline
from distill.experiments import use
from distill.nn import param_count
from distill.students.store import load_student
from distill.tn import canonical, dmrg
from distill.tn import mps as mps_lib

SWEEP_RUN = ["teacher.epochs=6", "teacher.hidden=[32]", "teacher.lr=1e-2", "student.bond_dim=4",
             "distill.mode=[sweep]", "distill.sweeps=2", "distill.sweep_samples=256", "distill.sweep_steps=10",
             "distill.sweep_lr=3e-3", "distill.sweep_cutoff=1e-3", "data.ordering=random", "data.ordering_seed=5"]


@pytest.fixture(scope="module")
def swept(tmp_path_factory):
    out = tmp_path_factory.mktemp("analyze") / "run"
    folder, results = pipeline.run(load_config(None, SWEEP_RUN), out, progress=False)
    return folder, results


@pytest.fixture(scope="module")
def analysis(swept):
    folder, _ = swept
    return analyze_lib.analyze(folder, chis=[2, 4], finetune_epochs=1, tt_ranks=(2, 64), progress=False)


def test_sweep_phase_trains_reports_and_reloads(swept):
    folder, r = swept
    h = r["student"]["histories"]["student (sweeps)"]
    sw = h["sweep"]
    assert r["student"]["accuracy_stages"].keys() == {"sweep"}
    # from the near-identity init (loss ≈ KD of uniform logits) the sweeps lower the module's loss a lot
    assert all(np.isfinite(h["train_loss"])) and max(h["train_loss"]) < 0.6 * sw["loss_before"]
    assert r["student"]["accuracy"] > 0.5  # chance is 0.1
    n = 64
    assert len(sw["bond_ranks"]) == 2 and all(len(b) == n for b in sw["bond_ranks"])
    assert all(max(b) <= 4 for b in sw["bond_ranks"]) and sw["bond_ranks"][0][0] <= 2  # bond 0 ≤ d
    assert all(e <= sw["stored_params"] for e in sw["effective_params"])
    # the saved student reloads with the order it was built with and reproduces the run's figures
    student = load_student(folder)
    np.testing.assert_array_equal(np.asarray(student.inner.site_order[...]), site_order((8, 8), "random", seed=5))
    params = student.inner.params
    best = h["best_epoch"] - 1
    assert dmrg.effective_num_params(params) == sw["effective_params"][best]
    assert list(dmrg.bond_ranks(params)) == sw["bond_ranks"][best]
    assert mps_lib.num_params(params) == sw["stored_params"] == param_count(student.inner) - 1  # − log_scale
    ev = use.evaluate(folder)
    assert ev["accuracy"] == pytest.approx(r["student"]["accuracy"], abs=1e-9)


def test_sweep_phase_is_valid_after_end_to_end_and_refuses_what_it_cannot_run():
    from distill.experiments.checks import check_config

    cfg = load_config(None, ["distill.mode=[end_to_end, sweep]"])
    assert cfg.distill.phases == ("end_to_end", "sweep")
    check_config(cfg)
    for overrides, needle in ((["student.family=tt", "distill.mode=[sweep]"], "student.family=mps"),
                              (["distill.mode=[sweep]", "augment.translate=2"], "augmentation off"),
                              (["distill.mode=[sweep]", "distill.sweep_max_bond=9"], "sweep_max_bond = 9")):
        with pytest.raises(DistillError, match=needle):
            check_config(load_config(None, overrides))


def test_analysis_values_match_their_definitions(swept, analysis):
    folder, r = swept
    out, a = analysis
    assert out == folder / "analysis"
    saved = json.loads((out / "analysis.json").read_text())
    assert saved["truncation"] == json.loads(json.dumps(a["truncation"]))
    student = load_student(folder).inner
    # bonds: {bond, chi, entropy, schmidt}, entropy in nats of the Schmidt values
    want = canonical.entanglement_entropy(student.params)
    assert [b["bond"] for b in a["bonds"]] == list(range(64))
    np.testing.assert_allclose([b["entropy"] for b in a["bonds"]], want, rtol=1e-9)
    for b in a["bonds"]:
        s = np.asarray(b["schmidt"])
        assert b["chi"] == s.size and np.isclose(np.sum(s * s), 1.0)
        assert b["entropy"] == pytest.approx(-np.sum(s * s * np.log(s * s)), rel=1e-9)
    # truncation: χ′ = χ keeps every prediction; χ′ = 2 loses exactly the discarded Schmidt weight
    rows = {t["chi"]: t for t in a["truncation"]}
    assert rows[4]["accuracy"] == pytest.approx(r["student"]["accuracy"], abs=1e-9)
    assert rows[4]["discarded"] < 1e-6
    tr = canonical.truncate(student.params, max_bond=2)
    assert rows[2]["discarded"] == pytest.approx(float(np.sum(tr.discarded)), rel=1e-6)
    n, d, m = 64, 2, 10
    assert rows[2]["params"] == 2 * d * 2 + (n - 2) * d * 4 + 2 * m * 2 + 1  # first, last, 62 bulk, out, log_scale
    assert all(t["accuracy_finetuned"] is not None for t in a["truncation"])
    # teacher: entropies per cut are those of weight_entanglement with the same ordering
    layers = {layer["name"]: layer for layer in a["teacher"]["layers"]}
    assert set(layers) == {"hidden_0", "logits"}
    h0 = {o["in_ordering"]: o for o in layers["hidden_0"]["orderings"]}
    assert {"row_major", "snake", "hilbert", "random", "correlation"} <= set(h0)
    from distill import teachers

    teacher, _ = teachers.load_teacher(folder / "teacher")
    W = np.asarray(teacher.hidden_0.kernel[...], np.float64).T
    got = weight_entanglement(W, in_order=site_order((8, 8), "snake"), n_cores=4)
    np.testing.assert_allclose([c["entropy"] for c in h0["snake"]["cuts"]], [c["entropy"] for c in got["cuts"]],
                               rtol=1e-12)
    # a TT rank above every cut's maximum is exact: the teacher's own accuracy
    full = [x for x in a["teacher"]["tt_rank_accuracy"] if x["rank"] == 64 and x["ordering"] == "row_major"]
    assert full[0]["accuracy"] == pytest.approx(r["teacher"]["accuracy"], abs=1e-9)
    assert a["suggested"]["student"]["target_accuracy"] == pytest.approx(r["student"]["accuracy"] - 0.01)
    for name in a["figures"]:
        assert (out / name).read_bytes()[:4] == b"\x89PNG"
    assert {"bond_entropy.png", "truncation.png", "teacher_entanglement.png"} <= set(a["figures"])
    text = (out / "analysis.md").read_text()
    assert "| χ′ | parameters |" in text and "## The teacher's weights as TT-matrices" in text


def test_cli_analyze_and_its_errors(swept, analysis, tmp_path, capsys):
    folder, _ = swept
    out = tmp_path / "an"
    assert cli.main(["analyze", str(folder), "--out", str(out), "--chi", "4", "--finetune-epochs", "0",
                     "--no-teacher", "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "χ′ =   4" in printed and f"analysis folder: {out}" in printed
    assert json.loads((out / "analysis.json").read_text())["teacher"] is None
    for args, needle in ((["--chi", "9"], "--chi values must be integers in [1, 4]"),
                         (["--chi", "a,b"], "--chi 'a,b'"),
                         (["--target-accuracy", "2"], "--target-accuracy")):
        assert cli.main(["analyze", str(folder), "--out", str(tmp_path / "x"), *args, "--quiet"]) == 2
        err = capsys.readouterr().err.strip()
        assert needle in err and len(err.splitlines()) == 1
    assert cli.main(["analyze", str(tmp_path)]) == 2
    assert "not a run folder" in capsys.readouterr().err
