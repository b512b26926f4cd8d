"""Site orderings reach the student: every `data.ordering` builds a permutation (random seeded by
data.ordering_seed, correlation from the training pixels), the order is saved with the student and
comes back on reload, and a shape-only check needs no data."""

import numpy as np
import pytest
from flax import nnx

from distill import config as config_lib
from distill.config import load_config
from distill.data.orderings import DATA_ORDERINGS, ORDERINGS, site_order
from distill.errors import DistillError
from distill.experiments.common import StudentInputs, build_student, student_site_order
from distill.students.store import load_student, save_student, spec_of, student_spec
from distill.train import predict

SHAPE = (4, 5)


def inputs(seed=0, n=64):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, SHAPE[0] * SHAPE[1])).astype(np.float32)
    x[:, 7] = x[:, 13]  # a planted pair of identical pixels far apart in row-major order
    return StudentInputs({"train": x, "val": x[:8], "test": x[:8]}, SHAPE)


def cfg_with(ordering, **extra):
    overrides = [f"data.ordering={ordering}", "student.bond_dim=3", *[f"{k}={v}" for k, v in extra.items()]]
    return load_config(None, overrides)


def test_config_offers_every_ordering_and_checks_the_seed():
    assert set(config_lib.ORDERINGS) == set(ORDERINGS) | set(DATA_ORDERINGS)
    for o in config_lib.ORDERINGS:
        assert cfg_with(o).data.ordering == o
    with pytest.raises(DistillError, match=r"data.ordering = 'hilbret'.*did you mean 'hilbert'"):
        cfg_with("hilbret")
    with pytest.raises(DistillError, match="data.ordering_seed"):
        cfg_with("random", **{"data.ordering_seed": -1})


@pytest.mark.parametrize("ordering", config_lib.ORDERINGS)
def test_every_ordering_is_a_permutation_chosen_as_documented(ordering):
    xs = inputs()
    cfg = cfg_with(ordering, seed=3)
    order = student_site_order(cfg, xs)
    assert order.dtype == np.int32 and np.array_equal(np.sort(order), np.arange(20))
    if ordering == "correlation":
        np.testing.assert_array_equal(order, site_order(SHAPE, "correlation", x=xs.x["train"]))
        pos = {int(p): i for i, p in enumerate(order)}
        assert abs(pos[7] - pos[13]) == 1  # the identical pair sits side by side
        # a shape-only build (no data) gets the identity
        np.testing.assert_array_equal(student_site_order(cfg, StudentInputs({}, SHAPE)), np.arange(20))
    elif ordering == "random":
        np.testing.assert_array_equal(order, site_order(SHAPE, "random", seed=3))  # default: the run's seed
        seeded = student_site_order(cfg_with("random", seed=3, **{"data.ordering_seed": 11}), xs)
        np.testing.assert_array_equal(seeded, site_order(SHAPE, "random", seed=11))
        assert not np.array_equal(seeded, order)
    else:
        np.testing.assert_array_equal(order, site_order(SHAPE, ordering))


@pytest.mark.parametrize("ordering", ["random", "correlation", "hilbert"])
def test_the_order_is_saved_with_the_student_and_reloads(ordering, tmp_path):
    xs = inputs(1)
    cfg = cfg_with(ordering, seed=2, **{"data.ordering_seed": 9})
    student = build_student(cfg, xs, 3)
    want_order = student_site_order(cfg, xs)
    np.testing.assert_array_equal(np.asarray(student.site_order[...]), want_order)
    # some training-free change of the cores so that the outputs depend on the order
    student.out[...] = student.out[...] * 2.0 + 0.1
    spec = student_spec(cfg, image_shape=SHAPE, data_downsample=1, n_classes=3, teacher_spec=None)
    save_student(student, tmp_path / "student", spec)
    assert spec_of(tmp_path)["ordering"] == ordering and spec_of(tmp_path)["ordering_seed"] == 9
    loaded = load_student(tmp_path)
    np.testing.assert_array_equal(np.asarray(loaded.inner.site_order[...]), want_order)
    np.testing.assert_allclose(predict(loaded, xs.x["test"]), predict(student, xs.x["test"]), rtol=1e-6, atol=1e-6)


def test_shape_only_check_accepts_a_data_driven_ordering():
    from distill.experiments.checks import check_student, shape_only_teacher

    cfg = cfg_with("correlation")
    check_student(cfg, (8, 8), 10, shape_only_teacher(cfg, (8, 8), 10))
    xs = StudentInputs({}, (8, 8))
    shape_only = nnx.eval_shape(lambda: build_student(cfg, xs, 10))
    assert shape_only.site_order.shape == (64,)
