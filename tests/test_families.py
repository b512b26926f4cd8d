"""Student families cp, tucker, tr in mirror students: conv replacement, warm starts that reproduce
the teacher, parameter counts by hand, budget matching against real builds, shared options."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from distill import students
from distill.config import from_dict
from distill.errors import DistillError
from distill.experiments.common import StudentInputs, conv_fidelity, describe_student
from distill.nn import param_count
from distill.nn.tr import TRLinear
from distill.students.budget import match_budget
from distill.students.mirror import (
    build_mirror,
    conv_layers,
    layer_params,
    mirror_param_count,
    replaced_compression,
    teacher_layers,
)
from distill.students.store import build_from_spec
from distill.students.tr import pad_ring
from distill.teachers.network import Network, cnn_spec, mlp_spec
from distill.tn import cp as cp_lib
from distill.tn import tr as tr_lib

FAMILIES = ["cp", "tucker", "tr"]


def cp_tensor(rng, modes, rank=2):
    return np.asarray(cp_lib.cp_reconstruct([rng.normal(size=(n, rank)) for n in modes]))


@pytest.fixture(scope="module")
def teacher():
    """A CNN 8×8×1 → conv_0 (1→2, 3×3) → conv_1 (2→4, 3×3, BatchNorm) → pool → hidden_0 16→6 →
    logits 3, whose conv kernels and hidden W have CP rank 2 (so every family can be exact)."""
    spec = cnn_spec((8, 8), 3, blocks=[{"channels": 2, "batchnorm": False}, 4], dense=(6,), batchnorm=True)
    net = Network(spec, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    net.conv_0.kernel[...] = jnp.asarray(cp_tensor(rng, (3, 3, 1, 2)), jnp.float32)
    net.conv_0.bias[...] = jnp.asarray(rng.normal(size=2) * 0.1, jnp.float32)
    net.conv_1.kernel[...] = jnp.asarray(cp_tensor(rng, (3, 3, 2, 4)), jnp.float32)
    net.bn_0.mean[...] = jnp.asarray(rng.normal(size=4), jnp.float32)
    net.bn_0.var[...] = jnp.asarray(rng.uniform(0.5, 2.0, size=4), jnp.float32)
    # hidden W (6, 16) = CP rank 2 over the modes (2, 3 | 4, 4) the families use (factorize(·, 2))
    W = cp_tensor(rng, (2, 3, 4, 4)).reshape(6, 16)
    net.hidden_0.kernel[...] = jnp.asarray(W.T, jnp.float32)
    net.hidden_0.bias[...] = jnp.asarray(rng.normal(size=6) * 0.1, jnp.float32)
    return net


@pytest.fixture(scope="module")
def x():
    return np.random.default_rng(1).random((16, 64)).astype(np.float32)


def options(family, **kw):
    base = {"cp": {"rank": 2, "cp_iters": 3000}, "tucker": {"rank": 8}, "tr": {"rank": 16}}[family]
    return students.family(family).Options(**{**base, **kw})


def shapes(module):
    return jax.tree.map(lambda a: tuple(a.shape), nnx.to_pure_dict(nnx.state(module, nnx.Param)))


@pytest.mark.parametrize("family", FAMILIES)
def test_full_rank_warm_starts_reproduce_the_teachers_logits(family, teacher, x):
    opts = options(family, keep_first_conv=False)
    student = build_mirror(family, opts, teacher, seed=0)
    assert student.replaced == ("conv_0", "conv_1", "hidden_0")
    want = np.asarray(teacher(jnp.asarray(x)))
    np.testing.assert_allclose(np.asarray(student(jnp.asarray(x))), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    # each replaced layer fed the teacher's own input gives the teacher's output (conv_0 reads the pixels)
    fid = conv_fidelity(student, teacher, x, "post")
    assert set(fid) == {"conv_0", "conv_1"}
    assert all(f["relative_error"] < 1e-4 and f["r2"] > 1 - 1e-6 for f in fid.values())
    # the structure does not depend on the warm start: a saved student is rebuilt before its arrays
    assert shapes(student) == shapes(build_mirror(family, opts, teacher, seed=0, warm_start=False))
    # what a run folder rebuilds from (family, options, teacher spec) has the same arrays
    spec = {"family": family, "options": dataclasses.asdict(opts), "seed": 0, "image_shape": [8, 8],
            "data_downsample": 1, "student_downsample": 1, "n_classes": 3, "teacher_spec": teacher.spec}
    assert shapes(build_from_spec(spec)) == shapes(student)


def test_which_layers_are_replaced(teacher):
    def replaced(family, **kw):
        opts = students.family(family).Options(**kw)
        return nnx.eval_shape(lambda: build_mirror(family, opts, teacher, seed=0, warm_start=False)).replaced

    for family in FAMILIES:
        assert replaced(family) == ("conv_1", "hidden_0")  # default: all but the conv reading the image
        assert replaced(family, replace="dense") == ("hidden_0",)
        assert replaced(family, replace="conv") == ("conv_1",)
        assert replaced(family, replace="conv", keep_first_conv=False) == ("conv_0", "conv_1")
    assert replaced("lowrank") == replaced("tt") == ("hidden_0",)  # families without convolutions
    assert [c.name for c in conv_layers(teacher.spec)] == ["conv_0", "conv_1"]
    mlp = Network(mlp_spec(16, [8], 3, "relu", (4, 4)), rngs=nnx.Rngs(0))
    with pytest.raises(DistillError, match="student.replace=conv: the teacher has no convolution"):
        build_mirror("tucker", students.family("tucker").Options(replace="conv"), mlp, seed=0)
    assert replaced_via(mlp, "tr") == ("hidden_0",)  # replace: all on an MLP = its dense layers
    with pytest.raises(DistillError, match=r"student.replace = 'convs' is not allowed: must be one of dense, conv, all"):
        from_dict({"student": {"family": "cp", "replace": "convs"}})


def replaced_via(teacher, family):
    opts = students.family(family).Options()
    return nnx.eval_shape(lambda: build_mirror(family, opts, teacher, seed=0, warm_start=False)).replaced


def test_parameter_counts_by_hand(teacher):
    t_conv1, t_hidden = 3 * 3 * 2 * 4, 16 * 6 + 6  # conv_1 has no bias (BatchNorm follows)
    by_hand = {
        # CP rank 2: conv 2·(3 + 3 + 2 + 4) + 4 bias; dense modes (4, 4 | 2, 3): 2·(4 + 4 + 2 + 3) + 6
        "cp": (2 * (3 + 3 + 2 + 4) + 4, 2 * (4 + 4 + 2 + 3) + 6),
        # Tucker-2 rank 2: conv U_in 2·2 + core 3·3·2·2 + U_out 4·2 + 4; dense 16·2 + 2·2 + 6·2 + 6
        "tucker": (2 * 2 + 9 * 2 * 2 + 4 * 2 + 4, 16 * 2 + 2 * 2 + 6 * 2 + 6),
        # TR rank 2 (4 per core): conv ring (1, 2 | 9 | 2, 2); dense ring (4, 4 | 2, 3)
        "tr": (4 * (1 + 2 + 9 + 2 + 2) + 4, 4 * (4 + 4 + 2 + 3) + 6),
    }
    total = param_count(teacher)
    # conv_rank sets the convolutions' rank apart (budget matching moves `rank` only)
    opts = students.family("cp").Options(rank=2, conv_rank=5)
    rows = layer_params(build_mirror("cp", opts, teacher, seed=0, warm_start=False), teacher)
    assert [r["params"] for r in rows] == [5 * (3 + 3 + 2 + 4) + 4, 2 * (4 + 4 + 2 + 3) + 6]
    opts = students.family("tr").Options(rank=2, conv_rank=3)
    rows = layer_params(build_mirror("tr", opts, teacher, seed=0, warm_start=False), teacher)
    assert [r["params"] for r in rows] == [9 * (1 + 2 + 9 + 2 + 2) + 4, 4 * (4 + 4 + 2 + 3) + 6]
    for family, (conv1, hidden) in by_hand.items():
        opts = students.family(family).Options(rank=2)
        student = build_mirror(family, opts, teacher, seed=0)
        rows = layer_params(student, teacher)
        assert [(r["layer"], r["kind"], r["params"], r["teacher_params"]) for r in rows] == [
            ("conv_1", "conv", conv1, t_conv1), ("hidden_0", "dense", hidden, t_hidden)]
        comp = replaced_compression(rows)
        assert comp == {"teacher_params": t_conv1 + t_hidden, "params": conv1 + hidden,
                        "compression_ratio": (t_conv1 + t_hidden) / (conv1 + hidden)}
        assert param_count(student) == mirror_param_count(family, opts, teacher) == total - t_conv1 - t_hidden \
            + conv1 + hidden


@pytest.mark.parametrize("family", FAMILIES)
def test_budget_matching_hits_the_counts_of_real_builds(family, teacher):
    base = students.family(family).Options(cp_iters=5) if family == "cp" else students.family(family).Options()
    target = param_count(teacher) // 3
    opts, count = match_budget(family, base, teacher, target, max_size=64)
    real = build_mirror(family, opts, teacher, seed=0)  # warm-started: TR-SVD ranks padded up to `rank`
    assert param_count(real) == count
    lower = mirror_param_count(family, dataclasses.replace(opts, rank=opts.rank - 1), teacher) if opts.rank > 1 \
        else None
    higher = mirror_param_count(family, dataclasses.replace(opts, rank=opts.rank + 1), teacher)
    assert abs(count - target) <= abs(higher - target)
    assert lower is None or abs(count - target) <= abs(lower - target)


def test_tr_padding_keeps_the_tensor_and_leaves_it_trainable():
    rng = np.random.default_rng(3)
    cores = tr_lib.tr_decompose(rng.normal(size=(4, 3, 5)), rank=2)  # bonds below 3
    padded = pad_ring(cores, (3, 3, 3), seed=0)
    assert [p.shape for p in padded] == [(3, 4, 3), (3, 3, 3), (3, 5, 3)]
    np.testing.assert_allclose(tr_lib.tr_reconstruct(padded), tr_lib.tr_reconstruct(cores), atol=1e-12)
    grads = jax.grad(lambda cs: jnp.sum(tr_lib.tr_reconstruct(cs) ** 2))([jnp.asarray(p) for p in padded])
    for k, (core, g) in enumerate(zip(cores, grads)):  # the zero block (new right bond) gets a gradient
        assert np.abs(np.asarray(g)[:, :, core.shape[2]:]).max() > 1e-6, k
    # a dead unit (zero row of W): TR-SVD (start mode of size 4: r_0·r_1 ≤ 4) finds smaller ranks
    # than the cap; the family's layer has rank 8 on every bond and still holds W exactly
    W = rng.normal(size=(6, 16))
    W[2] = 0.0
    found = TRLinear.from_dense(W, n_factors=2, rank=8).ranks
    assert found != (8, 8, 8, 8)
    opts = students.family("tr").Options(rank=8)
    layer = students.family("tr").make_layer(opts, 16, 6, dense=(W, np.zeros(6)), activation="relu", input_range=None,
                                             seed=0, index=0, rngs=nnx.Rngs(0))
    assert layer.ranks == (8, 8, 8, 8)
    np.testing.assert_allclose(np.asarray(layer.to_dense()), W, atol=1e-5)


def test_layerwise_fits_only_the_replaced_dense_layers(teacher, x):
    tl = teacher_layers(teacher, {"train": x, "val": x, "test": x}, "post")
    fits = build_mirror("tucker", options("tucker", replace="conv"), teacher, seed=0).layer_fits("post", tl)
    assert fits == []
    fits = build_mirror("tucker", options("tucker"), teacher, seed=0).layer_fits("post", tl)
    assert [f.name for f in fits] == ["hidden_0"]


def test_description_names_the_replaced_layers(teacher):
    cfg = from_dict({"student": {"family": "tr", "rank": 3}})
    text = describe_student(cfg, StudentInputs({}, (8, 8)), teacher)
    assert text == ("the teacher with its hidden dense layers (6) and convolutions (conv_1) replaced by tensor-ring "
                    "layers (every bond rank 3, 2+2 modes); conv_0 kept from the teacher")
    cfg = from_dict({"student": {"family": "cp", "rank": 3, "conv_rank": 2, "replace": "conv"}})
    assert describe_student(cfg, StudentInputs({}, (8, 8)), teacher) == (
        "the teacher with its convolutions (conv_1) replaced by CP layers (rank 3, conv rank 2; dense W over 2+2 "
        "modes, separable conv kernels); conv_0 kept from the teacher")


def test_shared_options_have_one_type_default_and_rule():
    seen = {}
    for name, module in students.families().items():
        for f in dataclasses.fields(module.Options):
            rule = f.metadata.get("rule") if f.metadata else None
            key = (f.type, f.default, rule)
            if f.name in seen:
                assert seen[f.name][1] == key, f"student.{f.name}: {seen[f.name][0]} and {name} differ"
            else:
                seen[f.name] = (name, key)
    assert {"replace", "keep_first_conv", "conv_rank", "rank", "warm_start"} <= set(seen)
