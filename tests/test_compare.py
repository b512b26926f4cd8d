"""distill.compare: compare_maps run folder and statistics, budget rule, check_map."""

import csv
import json

import jax.numpy as jnp
import numpy as np
import pytest

from distill.experiments import compare_maps as compare
from distill.config import from_dict
from distill.errors import DistillError
from distill.nn import param_count
from distill.tn.feature_maps import register_feature_map, unregister_feature_map

TINY = {
    "name": "tiny_compare",
    "data": {"name": "digits", "train_fraction": 0.3},
    "teacher": {"hidden": [32], "epochs": 4, "batch_size": 32, "lr": 5e-3},
    "student": {"bond_dim": 6},
    "distill": {"epochs": 1, "batch_size": 64},
    "compare": {
        "seeds": [0, 1],
        "budget": "params",
        "maps": [
            {"name": "fourier", "order": 1},
            {"name": "pair_product", "pairing": "random"},
        ],
    },
}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    cfg = from_dict(TINY)
    folder, results = compare.compare_maps(cfg, tmp_path_factory.mktemp("cmp") / "run", progress=False)
    return cfg, folder, results


def test_folder_has_every_file_and_means_are_the_means_of_the_seeds(tiny_run):
    cfg, folder, results = tiny_run
    for name in ("config.yaml", "results.json", "results.csv", "report.md", "compare_maps.png", "teacher"):
        assert (folder / name).exists(), name
    assert not list(folder.parent.glob(".*partial*"))
    stored = json.loads((folder / "results.json").read_text())
    assert [m["label"] for m in stored["maps"]] == ["fourier(order=1)", "pair_product [random]"]
    for m in stored["maps"]:
        assert [r["seed"] for r in m["runs"]] == [0, 1]
        for metric in compare.METRICS:
            vals = [r[metric] for r in m["runs"]]
            if metric.startswith("layer_r2"):  # the MPS student has no hidden layers
                assert vals == [None, None] and m["summary"][metric] == {"mean": None, "std": None}
                continue
            assert m["summary"][metric]["mean"] == pytest.approx(np.mean(vals), rel=1e-12)
            assert m["summary"][metric]["std"] == pytest.approx(np.std(vals, ddof=1), rel=1e-9, abs=1e-15)
        for r in m["runs"]:
            assert 0.0 <= r["accuracy"] <= 1.0 and r["kl"] >= 0.0 and r["params"] == m["params"]
        # the shift keeps pair_product's Φ(x) away from 0 on images with black pixels
        assert m["summary"]["vanishing_fraction"]["mean"] == 0.0
    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert len(rows) == 4
    assert float(rows[2]["accuracy"]) == pytest.approx(stored["maps"][1]["runs"][0]["accuracy"])
    report = (folder / "report.md").read_text()
    assert "Welch" in report and "| fourier(order=1) | 3 | 6 |" in report
    assert len(stored["pairs"]) == 1


def test_bond_dims_follow_the_params_budget(tiny_run):
    cfg, _, results = tiny_run
    maps = results["maps"]
    ref = maps[0]
    assert ref["bond_dim"] == 6 and ref["d"] == 3
    n, m = 64, 10
    for entry in maps:
        d, chi = entry["d"], entry["bond_dim"]
        hand = 2 * d * chi + (n - 2) * d * chi * chi + chi * m * chi + 1
        assert entry["params"] == hand
        assert abs(entry["params"] - ref["params"]) <= 0.15 * ref["params"]
        # no other χ is closer to the reference count
        for other in (chi - 1, chi + 1):
            if other >= 1:
                alt = 2 * d * other + (n - 2) * d * other**2 + other * m * other + 1
                assert abs(alt - ref["params"]) >= abs(hand - ref["params"])
    assert maps[1]["d"] == 2 and maps[1]["bond_dim"] == 7  # 6,595 vs 7,093 (χ 8: 8,609)


def test_d_chi2_budget_and_learned_extra_params():
    cfg = from_dict({**TINY, "student": {"bond_dim": 6},
                     "compare": {"budget": "d_chi2", "maps": [
                         {"name": "trig"}, {"name": "legendre", "degree": 3},
                         {"name": "learned", "feature_dim": 2, "hidden": 4}]}})
    specs = compare.parse_maps(cfg)
    dims = compare.choose_bond_dims(specs, cfg, (8, 8), 10)
    assert [b["d"] for b in dims] == [2, 4, 2]
    assert [b["bond_dim"] for b in dims] == [6, 4, 6]  # 2·36 = 72 vs 4·16 = 64 (4·25 = 100 is farther)
    learned = specs[2].student(cfg, (8, 8), 10, 6, seed=0)
    assert dims[2]["params"] == param_count(learned) == dims[0]["params"] + 4 + 4 + 4 * 2 + 2  # w1, b1, w2, b2


@pytest.mark.parametrize("maps, match", [
    ([], "compare.maps is empty"),
    ([{"name": "fourir"}], "did you mean 'fourier'"),
    ([{"name": "pair_product", "pairing": "neighbor"}], "pairing"),
    ([{"name": "trig"}, {"name": "trig"}], "distinct 'label'"),
])
def test_bad_map_entries_are_one_line_errors(maps, match, tmp_path):
    cfg = from_dict({**TINY, "compare": {"maps": maps}})
    with pytest.raises(DistillError, match=match) as err:
        compare.compare_maps(cfg, tmp_path / "run", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()


def test_a_student_without_a_feature_map_is_refused(tmp_path):
    cfg = from_dict({**TINY, "student": {**TINY.get("student", {}), "family": "tt"}})
    with pytest.raises(DistillError, match="'tt' has no feature map to compare"):
        compare.compare_maps(cfg, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_check_map_valid_map_and_formatting():
    r = compare.check_map("legendre", {"degree": 2})
    assert r.ok and r.d == 3 and r.message is None
    assert r.value_sv.shape == (3,) and r.value_sv[-1] > 1e-3 * r.value_sv[0]
    text = compare.format_validity(r)
    assert text.splitlines()[-1] == "OK: valid feature map"
    assert f"{r.value_sv[0]:.4g}" in text


def test_check_map_degenerate_map_is_refused():
    register_feature_map("one_x_onex", lambda: lambda x: jnp.stack([jnp.ones_like(x), x, 1 + x], -1))
    try:
        r = compare.check_map("one_x_onex", {})
    finally:
        unregister_feature_map("one_x_onex")
    assert not r.ok
    assert r.value_sv[-1] < 1e-6 * r.value_sv[0]
    text = compare.format_validity(r)
    assert text.splitlines()[-1].startswith("refused: feature map 'one_x_onex' is degenerate")


def test_check_map_pairwise_counts_vanishing_samples_on_data():
    x = np.zeros((3, 4))
    x[:, 1:] = 0.5
    x[1, 1:] = [0.2, 0.9, 0.4]
    literal = compare.check_map("pair_product", {}, pairing="neighbour", samples=x, pair_shift=0.0)
    shifted = compare.check_map("pair_product", {}, pairing="neighbour", samples=x)
    assert literal.n_samples == shifted.n_samples == 12
    assert literal.n_vanishing == 3  # input 0 is black in every row: φ(0, ·) = 0
    assert shifted.n_vanishing == 0
    with pytest.raises(DistillError, match="did you mean 'pair_product'"):
        compare.check_map("pair_prod", {})


# ------------------------------------------------------------------ layer-wise variant

TINY_LAYERS = {
    **TINY,
    "name": "tiny_compare_layers",
    "teacher": {"hidden": [12, 8], "epochs": 4, "batch_size": 32, "lr": 5e-3},
    "student": {"family": "mps_layers", "bond_dim": 3},
    "distill": {"mode": "staged", "layer_epochs": 1, "epochs": 1, "batch_size": 64},
    "compare": {"seeds": [0, 1], "budget": "params",
                "maps": [{"name": "trig"}, {"name": "pair_affine", "pairing": "random"}]},
}


@pytest.fixture(scope="module")
def tiny_layers_run(tmp_path_factory):
    cfg = from_dict(TINY_LAYERS)
    folder, results = compare.compare_maps(cfg, tmp_path_factory.mktemp("cmpl") / "run", progress=False)
    return cfg, folder, results


def test_layerwise_variant_records_layer_fidelity_and_matches_budgets(tiny_layers_run):
    cfg, folder, results = tiny_layers_run
    assert results["variant"]["family"] == "mps_layers" and results["variant"]["mode"] == "staged"
    ref, pair = results["maps"]
    assert (ref["d"], ref["bond_dim"], pair["d"]) == (2, 3, 3)
    # the whole mirror student is counted: MPS layers 64→12, 12→8 and the dense head 8→10
    from flax import nnx

    from distill.students.mirror import build_mirror, mirror_param_count
    from distill.teachers import Network, mlp_spec

    teacher = Network(mlp_spec(64, [12, 8], 10, "relu", (8, 8)), rngs=nnx.Rngs(0))
    for m in (ref, pair):
        run_cfg = compare.parse_maps(cfg)[results["maps"].index(m)].config(cfg, m["bond_dim"], seed=0)
        built = build_mirror("mps_layers", run_cfg.student.options, teacher, seed=0, warm_start=False)
        assert m["params"] == param_count(built) == m["runs"][0]["params"]
        # χ ± 1 would be farther from the reference's count
        for other in (m["bond_dim"] - 1, m["bond_dim"] + 1):
            if other >= 1 and m is pair:
                alt_cfg = compare.parse_maps(cfg)[1].config(cfg, other, seed=0)
                alt = mirror_param_count("mps_layers", alt_cfg.student.options, teacher)
                assert abs(alt - ref["params"]) >= abs(m["params"] - ref["params"])
    for m in (ref, pair):
        for r in m["runs"]:
            for key in ("layer_r2_layerwise", "layer_r2_final"):  # R² ≤ 1; one epoch can leave it far below 0
                assert np.isfinite(r[key]) and r[key] <= 1.0
            assert 0.0 <= r["accuracy"] <= 1.0
        vals = [r["layer_r2_layerwise"] for r in m["runs"]]
        assert m["summary"]["layer_r2_layerwise"]["mean"] == pytest.approx(np.mean(vals), rel=1e-12)
    rows = list(csv.DictReader((folder / "results.csv").open()))
    assert float(rows[0]["layer_r2_final"]) == pytest.approx(ref["runs"][0]["layer_r2_final"])
    report = (folder / "report.md").read_text()
    assert "replaced by an MPS layer" in report and "layer R² after layer-wise" in report


def test_layerwise_variant_draws_a_pairing_per_layer_and_seed(tiny_layers_run):
    cfg, _, _ = tiny_layers_run
    from flax import nnx

    from distill.students.mirror import build_mirror
    from distill.teachers import Network, mlp_spec

    teacher = Network(mlp_spec(64, [12, 8], 10, "relu", (8, 8)), rngs=nnx.Rngs(0))
    spec = compare.parse_maps(cfg)[1]
    s0, s0b, s1 = (build_mirror("mps_layers", spec.config(cfg, 3, seed=seed).student.options, teacher, seed=seed,
                                warm_start=False) for seed in (0, 0, 1))

    def partners(s):
        return [np.asarray(getattr(s, name).partners[...]) for name in s.replaced]

    p0 = partners(s0)
    assert [p.shape for p in p0] == [(64,), (12,)]
    for a, b in zip(p0, partners(s0b)):
        np.testing.assert_array_equal(a, b)  # same seed, same pairing
    assert not np.array_equal(p0[0], partners(s1)[0])  # another seed, another one


@pytest.mark.parametrize("student, mode, match", [
    ({"family": "mps"}, "staged", "for the layer-wise variant set student.family=mps_layers"),
    ({"family": "mps_layers"}, "labels_only", "takes distill.mode layerwise / staged / end_to_end"),
    ({"family": "mps_layers", "downsample": 2}, "staged", "student.downsample=2 only applies"),
])
def test_variant_mistakes_are_one_line_errors(student, mode, match, tmp_path):
    cfg = from_dict({**TINY_LAYERS, "student": student, "distill": {"mode": mode}})
    with pytest.raises(DistillError, match=match) as err:
        compare.compare_maps(cfg, tmp_path / "run", progress=False)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run").exists()
