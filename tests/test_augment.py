"""Function matching: augmentations by hand, teacher and student fed the identical augmented image,
mixed labels, the teacher-in-the-loop path equal to precomputed logits without augmentation,
warm-up and EMA."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from distill import teachers, train
from distill.config import from_dict
from distill.data.augment import Augment, augment_copies
from distill.errors import DistillError
from distill.experiments import common
from distill.nn import MPS
from distill.teachers import Network, mlp_spec
from distill.train.step import Feed


def _images(b=6, h=4, w=5, seed=0):
    return np.random.default_rng(seed).uniform(size=(b, h * w)).astype(np.float32)


def test_translation_is_a_zero_padded_shift_by_hand():
    x = _images()
    aug = Augment((4, 5), translate=2)
    out, partner, lam = (np.asarray(a) for a in aug.apply(jnp.asarray(x), jax.random.key(0)))
    np.testing.assert_array_equal(partner, np.arange(6))
    np.testing.assert_array_equal(lam, np.ones(6))
    img, got = x.reshape(6, 4, 5), out.reshape(6, 4, 5)
    for i in range(6):  # each output is one of the 25 shifts of its input, zero-filled
        found = False
        for dy in range(-2, 3):
            for dx in range(-2, 3):
                ref = np.zeros((4, 5), np.float32)
                src = img[i, max(0, -dy):4 - max(0, dy), max(0, -dx):5 - max(0, dx)]
                ref[max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
                found |= np.array_equal(ref, got[i])
        assert found, i


def test_flip_mirrors_left_right_or_leaves_the_image():
    x = _images()
    out = np.asarray(Augment((4, 5), flip=True).apply(jnp.asarray(x), jax.random.key(1))[0]).reshape(6, 4, 5)
    img = x.reshape(6, 4, 5)
    kinds = [np.array_equal(o, i) or np.array_equal(o, i[:, ::-1]) for o, i in zip(out, img)]
    assert all(kinds)
    assert any(not np.array_equal(o, i) for o, i in zip(out, img))  # some were flipped


def test_mixup_and_cutmix_mix_with_the_partner_as_the_weights_say():
    x = _images(b=8)
    out, partner, lam = (np.asarray(a) for a in Augment((4, 5), mixup=0.4).apply(jnp.asarray(x), jax.random.key(2)))
    np.testing.assert_allclose(out, lam[:, None] * x + (1 - lam[:, None]) * x[partner], rtol=1e-6, atol=1e-7)
    assert sorted(partner.tolist()) == list(range(8)) and ((lam >= 0) & (lam <= 1)).all()
    out, partner, lam = (np.asarray(a) for a in Augment((4, 5), cutmix=1.0).apply(jnp.asarray(x), jax.random.key(3)))
    from_self = np.isclose(out, x) & ~np.isclose(x, x[partner])
    from_other = np.isclose(out, x[partner]) & ~np.isclose(x, x[partner])
    assert (from_self | from_other | np.isclose(x, x[partner])).all()  # every pixel is its own or its partner's
    moved = partner != np.arange(8)  # a sample paired with itself pastes its own pixels: nothing to see
    np.testing.assert_allclose(lam[moved], 1 - from_other.sum(1)[moved] / 20, atol=1e-6)  # lam = the area kept
    assert moved.sum() >= 6 and (lam < 1).any()


def test_mixed_labels_in_the_losses():
    z = jnp.asarray(np.random.default_rng(0).normal(size=(4, 3)), jnp.float32)
    y, y2 = jnp.asarray([0, 1, 2, 0]), jnp.asarray([1, 1, 0, 2])
    lam = jnp.asarray([1.0, 0.3, 0.5, 0.0])
    logp = jax.nn.log_softmax(z)
    want = -np.mean(lam * logp[jnp.arange(4), y] + (1 - lam) * logp[jnp.arange(4), y2])
    got = train.losses.CrossEntropy()(z, {"y": y, "y2": y2, "lam": lam})
    assert float(got) == pytest.approx(float(want), rel=1e-6)


def test_teacher_and_student_see_the_identical_augmented_image():
    teacher = Network(mlp_spec(64, [16], 10, "relu", (8, 8)), rngs=nnx.Rngs(0))
    teacher.eval()
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(5, 64)), jnp.float32)
    aug = Augment((8, 8), translate=1, mixup=0.5)
    key = jax.random.key(7)
    feed = Feed((8, 8), aug, pool=2, teacher=nnx.split(teacher)[0])
    got = feed.prepare({"x": x, "y": jnp.arange(5)}, key, nnx.state(teacher))
    xa, partner, lam = aug.apply(x, key)
    np.testing.assert_allclose(np.asarray(got["t"]), np.asarray(teacher(xa)), rtol=1e-6, atol=1e-6)
    pooled = np.asarray(xa).reshape(5, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(5, 16)  # the student's own view
    np.testing.assert_allclose(np.asarray(got["x"]), pooled, rtol=1e-6)
    np.testing.assert_array_equal(np.asarray(got["y2"]), np.arange(5)[np.asarray(partner)])
    layer = Feed((8, 8), aug, teacher=nnx.split(teacher)[0], source="flatten_0", target="hidden_0").prepare(
        {"x": x}, key, nnx.state(teacher))
    acts = teacher.activations(xa)
    np.testing.assert_allclose(np.asarray(layer["x"]), np.asarray(acts["flatten_0"]), rtol=1e-6)
    np.testing.assert_allclose(np.asarray(layer["t"]), np.asarray(acts["hidden_0"]), rtol=1e-6, atol=1e-6)


@pytest.fixture(scope="module")
def digits_teacher():
    cfg = from_dict({}, ["teacher.hidden=[32]", "teacher.epochs=4", "teacher.lr=1e-2"])
    data = common.load_data(cfg)
    return data, common.train_new_teacher(cfg, data, ckpt=None, devices=None, progress=False).model


def test_teacher_in_the_loop_without_augmentation_equals_precomputed_logits(digits_teacher):
    data, teacher = digits_teacher
    settings = train.TrainSettings(epochs=2, batch_size=64, lr=1e-2, seed=1)

    def student():
        return MPS(64, 10, bond_dim=4, rngs=nnx.Rngs(3))

    a, b = student(), student()
    ha = train.end_to_end(a, data.x_train, teachers.frozen_logits(teacher, data.x_train), data.y_train, None, settings,
                          temperature=4.0, alpha=0.9, progress=False)
    teacher.eval()
    hb = train.end_to_end(b, data.x_train, None, data.y_train, None, settings, temperature=4.0, alpha=0.9,
                          progress=False, feed=Feed((8, 8), None, 1, nnx.split(teacher)[0]), teacher=teacher)
    np.testing.assert_allclose(hb.train_loss, ha.train_loss, rtol=1e-6)


def test_black_box_copies_are_deterministic_and_labelled_per_copy():
    x, y = _images(b=10, h=8, w=8), np.arange(10) % 3
    aug = Augment((8, 8), translate=1, mixup=0.3)
    first = augment_copies(aug, x, y, copies=3, seed=5)
    again = augment_copies(aug, x, y, copies=3, seed=5)
    for a, b in zip(first, again):
        np.testing.assert_array_equal(a, b)
    xa, ya, y2, lam = first
    assert xa.shape == (30, 64) and (ya == np.tile(y, 3)).all()
    assert not np.array_equal(xa[:10], xa[10:20])  # each copy its own draw


def test_a_run_with_augmentation_and_flip_refusal(tmp_path):
    from distill.experiments import run

    with pytest.raises(DistillError, match="augment.flip = true would change the class of digits"):
        run.run(from_dict({}, ["augment.flip=true"]), tmp_path / "no", progress=False)
    cfg = from_dict({}, ["teacher.hidden=[16]", "teacher.epochs=2", "distill.epochs=2", "student.bond_dim=3",
                         "augment.translate=1", "augment.cutmix=1.0", "distill.warmup_epochs=1", "distill.ema=0.9"])
    _, results = run.run(cfg, tmp_path / "aug", progress=False)
    hist = results["student"]["histories"]["student (KD)"]
    assert hist["lr"][0] < hist["lr"][1]  # warming up over the first epoch
    assert 0.0 <= results["student"]["accuracy"] <= 1.0


def test_ema_is_what_is_kept():
    x = _images(b=64, h=3, w=4)
    y = (x[:, :3].argmax(1)).astype(np.int32)
    model = Network(mlp_spec(12, [8], 3, "tanh"), rngs=nnx.Rngs(0))
    settings = train.TrainSettings(epochs=2, batch_size=16, lr=1e-1, ema=0.5, seed=0)
    model.train()
    graphdef, params, rest = nnx.split(model, nnx.Param, ...)
    tx, schedule = train.make_optimizer(settings, 4)
    state = train.TrainState.create(params, rest, tx, 0, ema=True)
    before = jax.tree.map(np.asarray, state.params)
    state, _ = train.train_step(state, {"x": jnp.asarray(x[:16]), "y": jnp.asarray(y[:16])}, graphdef=graphdef,
                                loss=train.losses.CrossEntropy(), tx=tx, schedule=schedule, ema=0.5)
    for e, p0, p1 in zip(jax.tree.leaves(state.ema), jax.tree.leaves(before), jax.tree.leaves(state.params)):
        np.testing.assert_allclose(np.asarray(e), 0.5 * p0 + 0.5 * np.asarray(p1), rtol=1e-6, atol=1e-7)
