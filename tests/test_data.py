"""Tests for distill.data: IDX parsing and checksums, splits, downsampling, orderings, TFDS."""

from __future__ import annotations

import gzip
import hashlib
import os
import struct
import time

import numpy as np
import pytest

from distill.data import datasets
from distill.data import (
    DATASETS,
    DEFAULT_IDX_DIRS,
    ORDERINGS,
    Dataset,
    load_dataset,
    read_idx,
    site_order,
)
from distill.errors import DistillError

# ----------------------------------------------------------------------------- helpers


def _idx_bytes(arr: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
             np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}
    header = bytes([0, 0, codes[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def _write(path, payload: bytes) -> None:
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload)
    with open(path, "wb") as fh:
        fh.write(payload)


def _make_idx_folder(folder, *, n_train=30, n_test=10, h=4, w=6, gz=True, seed=0):
    """Four small IDX files; returns the arrays written."""
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, h, w), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, h, w), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
    }
    folder.mkdir(parents=True, exist_ok=True)
    for base, arr in arrays.items():
        _write(folder / (base + (".gz" if gz else "")), _idx_bytes(arr))
    return arrays


def _table_for(folder):
    """A correct checksum table: (md5 of .gz file or dummy, md5 of the raw payload)."""
    table = {}
    for base in datasets._IDX_FILES:
        gz = folder / (base + ".gz")
        if gz.exists():
            stored = gz.read_bytes()
            raw = gzip.decompress(stored)
        else:
            stored = raw = (folder / base).read_bytes()
        table[base] = (hashlib.md5(stored).hexdigest(), hashlib.md5(raw).hexdigest())
    return table


def _row_multiset(x: np.ndarray) -> list[bytes]:
    return sorted(row.tobytes() for row in np.ascontiguousarray(x))


# ----------------------------------------------------------------------------- IDX parser


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize(
    "arr",
    [
        np.arange(2 * 3 * 5, dtype=np.uint8).reshape(2, 3, 5),
        np.array([7, 0, 255, 3], dtype=np.uint8),
        np.array([[-5, 1000], [70000, -1]], dtype=np.int32),
        np.array([1.5, -2.25, 3e10], dtype=np.float32),
    ],
)
def test_read_idx_roundtrip(tmp_path, arr, suffix):
    path = tmp_path / f"a-idx{suffix}"
    _write(path, _idx_bytes(arr))
    out = read_idx(path)
    assert out.shape == arr.shape
    assert out.dtype == arr.dtype
    np.testing.assert_array_equal(out, arr)
    assert out.dtype.byteorder in ("=", "|")  # native order, safe for arithmetic


def test_read_idx_truncated_is_refused(tmp_path):
    arr = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "t-idx3-ubyte"
    _write(path, _idx_bytes(arr)[:-3])
    with pytest.raises(DistillError, match="truncated or corrupt IDX file") as err:
        read_idx(path)
    msg = str(err.value)
    assert str(path) in msg and "24" in msg and "21" in msg and "\n" not in msg
    # Truncated header too.
    _write(path, _idx_bytes(arr)[:9])
    with pytest.raises(DistillError, match="header"):
        read_idx(path)
    # Trailing garbage is just as wrong as missing bytes.
    _write(path, _idx_bytes(arr) + b"\x00")
    with pytest.raises(DistillError, match="truncated or corrupt IDX file"):
        read_idx(path)


def test_read_idx_bad_magic_and_dtype_refused(tmp_path):
    good = _idx_bytes(np.zeros((2, 2), dtype=np.uint8))
    path = tmp_path / "bad-idx"
    _write(path, b"\x01" + good[1:])
    with pytest.raises(DistillError, match="bad magic 0x01000802"):
        read_idx(path)
    _write(path, good[:2] + b"\x07" + good[3:])  # unknown dtype code
    with pytest.raises(DistillError, match="bad magic"):
        read_idx(path)
    _write(path, b"")
    with pytest.raises(DistillError, match="empty"):
        read_idx(path)


def test_read_idx_corrupt_gzip_and_missing(tmp_path):
    path = tmp_path / "x-idx1-ubyte.gz"
    path.write_bytes(gzip.compress(_idx_bytes(np.arange(100, dtype=np.uint8)))[:-10])
    with pytest.raises(DistillError, match="corrupt gzip"):
        read_idx(path)
    with pytest.raises(DistillError, match="not found"):
        read_idx(tmp_path / "nope-idx1-ubyte")


# ----------------------------------------------------------------------------- IDX folder + md5


@pytest.mark.parametrize("gz", [True, False])
def test_idx_folder_values_and_matching_md5(tmp_path, gz):
    arrays = _make_idx_folder(tmp_path, gz=gz)
    xtr, ytr, xte, yte = datasets._load_idx_folder(tmp_path, checksums=_table_for(tmp_path))
    np.testing.assert_array_equal(xtr, arrays["train-images-idx3-ubyte"])
    np.testing.assert_array_equal(ytr, arrays["train-labels-idx1-ubyte"])
    np.testing.assert_array_equal(xte, arrays["t10k-images-idx3-ubyte"])
    np.testing.assert_array_equal(yte, arrays["t10k-labels-idx1-ubyte"])
    # No checksum table (test path) works too.
    xtr2, *_ = datasets._load_idx_folder(tmp_path, checksums=None)
    np.testing.assert_array_equal(xtr2, xtr)


def test_idx_folder_recompressed_gz_accepted_via_raw_md5(tmp_path):
    _make_idx_folder(tmp_path, gz=True)
    table = {b: ("0" * 32, raw) for b, (_, raw) in _table_for(tmp_path).items()}
    datasets._load_idx_folder(tmp_path, checksums=table)  # .gz md5 differs, payload md5 matches


def test_idx_folder_md5_mismatch_refused(tmp_path):
    _make_idx_folder(tmp_path, gz=True)
    table = _table_for(tmp_path)
    base = "t10k-images-idx3-ubyte"
    table[base] = ("1" * 32, "2" * 32)
    with pytest.raises(DistillError, match="md5 mismatch") as err:
        datasets._load_idx_folder(tmp_path, checksums=table, dataset="fashion_mnist")
    msg = str(err.value)
    found = hashlib.md5(gzip.decompress((tmp_path / f"{base}.gz").read_bytes())).hexdigest()
    assert base in msg and "2" * 32 in msg and found in msg
    assert "dataset-fashion-mnist" in msg and "\n" not in msg


def test_idx_folder_missing_file_and_label_count(tmp_path):
    _make_idx_folder(tmp_path, gz=False)
    os.remove(tmp_path / "train-labels-idx1-ubyte")
    with pytest.raises(DistillError, match="train-labels-idx1-ubyte") as err:
        datasets._load_idx_folder(tmp_path, dataset="fashion_mnist")
    assert "apt-get install dataset-fashion-mnist" in str(err.value)
    _write(tmp_path / "train-labels-idx1-ubyte", _idx_bytes(np.zeros(29, dtype=np.uint8)))
    with pytest.raises(DistillError, match="30 images but"):
        datasets._load_idx_folder(tmp_path)


def test_load_dataset_missing_folder(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(DistillError) as err:
        load_dataset("fashion_mnist", data_dir=str(missing))
    msg = str(err.value)
    assert str(missing) in msg and "apt-get install dataset-fashion-mnist" in msg
    assert "data.data_dir" in msg


def test_load_dataset_idx_folder_end_to_end(tmp_path, monkeypatch):
    arrays = _make_idx_folder(tmp_path, n_train=40, n_test=10, h=4, w=6)
    # The real table would (rightly) refuse generated files.
    with pytest.raises(DistillError, match="md5 mismatch"):
        load_dataset("mnist", data_dir=str(tmp_path))
    monkeypatch.setitem(datasets._IDX_CHECKSUMS, "mnist", None)
    ds = load_dataset("mnist", data_dir=str(tmp_path), val_fraction=0.25, downsample=2)
    assert ds.image_shape == (2, 3) and ds.n_features == 6 and ds.num_classes == 10
    assert len(ds.y_train) == 30 and len(ds.y_val) == 10 and len(ds.y_test) == 10
    # The test split is untouched: same order, exact 2x2 averages / 255.
    raw = arrays["t10k-images-idx3-ubyte"].astype(np.float64) / 255
    pooled = raw.reshape(10, 2, 2, 3, 2).mean(axis=(2, 4)).reshape(10, 6)
    np.testing.assert_allclose(ds.x_test, pooled, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    # Stratified val: 1 per class of the 4-per-class train split.
    np.testing.assert_array_equal(np.bincount(ds.y_val, minlength=10), np.ones(10))


# ----------------------------------------------------------------------------- digits


def test_digits_splits():
    a = load_dataset("digits", seed=0)
    b = load_dataset("digits", seed=1)
    assert isinstance(a, Dataset) and a.name == "digits"
    assert a.image_shape == (8, 8) and a.n_features == 64 and a.num_classes == 10
    for x, y in ((a.x_train, a.y_train), (a.x_val, a.y_val), (a.x_test, a.y_test)):
        assert x.dtype == np.float32 and y.dtype == np.int32
        assert x.ndim == 2 and x.shape[1] == 64 and x.shape[0] == y.shape[0]
        assert x.min() >= 0.0 and x.max() <= 1.0
    # 1797 = 359 test (20 %) + 144 val (10 % of 1438) + 1294 train.
    assert (len(a.y_test), len(a.y_val), len(a.y_train)) == (359, 144, 1294)
    # Values are the raw 0..16 counts / 16.
    assert np.allclose(a.x_train * 16, np.round(a.x_train * 16)) and a.x_train.max() == 1.0
    # Fixed test split, seed-dependent val.
    np.testing.assert_array_equal(a.x_test, b.x_test)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_val, b.x_val)
    # train + val + test is exactly the full dataset (a partition, no overlap).
    from sklearn.datasets import load_digits

    full = (load_digits().data / 16).astype(np.float32)
    for ds in (a, b):
        parts = np.concatenate([ds.x_train, ds.x_val, ds.x_test])
        assert _row_multiset(parts) == _row_multiset(full)
        # train+val of a and b are the same set (only the val carve-out moved).
    assert _row_multiset(np.concatenate([a.x_train, a.x_val])) == _row_multiset(
        np.concatenate([b.x_train, b.x_val])
    )
    # Stratified: every class in every split.
    for y in (a.y_train, a.y_val, a.y_test):
        assert set(np.unique(y)) == set(range(10))
    # Same seed -> same result.
    c = load_dataset("digits", seed=0)
    np.testing.assert_array_equal(a.x_val, c.x_val)
    np.testing.assert_array_equal(a.x_train, c.x_train)


def test_digits_fractions():
    ds = load_dataset("digits", val_fraction=0.25, train_fraction=0.1, seed=3)
    assert len(ds.y_test) == 359
    assert len(ds.y_val) == round(0.25 * 1438) == 360
    assert len(ds.y_train) == round(0.1 * (1438 - 360)) == 108
    assert set(np.unique(ds.y_train)) == set(range(10))
    # Val does not depend on train_fraction.
    full = load_dataset("digits", val_fraction=0.25, seed=3)
    np.testing.assert_array_equal(ds.x_val, full.x_val)
    assert set(_row_multiset(ds.x_train)) <= set(_row_multiset(full.x_train))
    # Tiny fraction still keeps one example per class.
    tiny = load_dataset("digits", train_fraction=0.001, seed=0)
    np.testing.assert_array_equal(np.bincount(tiny.y_train, minlength=10), np.ones(10))
    # val_fraction = 0 gives an empty val split with the right width.
    nov = load_dataset("digits", val_fraction=0.0)
    assert nov.x_val.shape == (0, 64) and nov.y_val.shape == (0,)
    assert len(nov.y_train) == 1438


@pytest.mark.parametrize(
    "kwargs, what",
    [
        ({"val_fraction": 1.0}, "data.val_fraction"),
        ({"val_fraction": -0.1}, "data.val_fraction"),
        ({"val_fraction": float("nan")}, "data.val_fraction"),
        ({"train_fraction": 0.0}, "data.train_fraction"),
        ({"train_fraction": 1.5}, "data.train_fraction"),
        ({"downsample": 0}, "data.downsample"),
        ({"downsample": 2.0}, "data.downsample"),
        ({"downsample": 3}, "does not divide"),
        ({"seed": -1}, "data.seed"),
    ],
)
def test_invalid_arguments_refused(kwargs, what):
    with pytest.raises(DistillError, match=what) as err:
        load_dataset("digits", **kwargs)
    assert "\n" not in str(err.value)


def test_unknown_dataset_lists_allowed():
    with pytest.raises(DistillError) as err:
        load_dataset("cifar")
    msg = str(err.value)
    assert "'cifar'" in msg and "tfds:<name>" in msg
    assert all(name in msg for name in DATASETS)


# ----------------------------------------------------------------------------- downsample


def test_downsample_hand_computed():
    img = np.array(
        [[0, 4, 8, 12], [16, 20, 24, 28], [1, 2, 3, 4], [5, 6, 7, 8]], dtype=np.float32
    )[None]
    out = datasets._to_features(img, 32.0, 2)
    expected = np.array([[(0 + 4 + 16 + 20) / 4, (8 + 12 + 24 + 28) / 4,
                          (1 + 2 + 5 + 6) / 4, (3 + 4 + 7 + 8) / 4]]) / 32
    assert out.dtype == np.float32 and out.shape == (1, 4)
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-7)


def test_digits_downsample_matches_pooling():
    d1 = load_dataset("digits", seed=5)
    d2 = load_dataset("digits", seed=5, downsample=2)
    assert d2.image_shape == (4, 4) and d2.x_train.shape[1] == 16
    manual = d1.x_train.reshape(-1, 4, 2, 4, 2).mean(axis=(2, 4)).reshape(-1, 16)
    np.testing.assert_allclose(d2.x_train, manual, atol=1e-6)
    d8 = load_dataset("digits", downsample=8)
    np.testing.assert_allclose(d8.x_test[:, 0], load_dataset("digits").x_test.mean(1), atol=1e-6)


# ----------------------------------------------------------------------------- site_order


def test_site_order_3x4():
    np.testing.assert_array_equal(site_order((3, 4), "row_major"), np.arange(12))
    np.testing.assert_array_equal(
        site_order((3, 4), "snake"), [0, 1, 2, 3, 7, 6, 5, 4, 8, 9, 10, 11]
    )
    np.testing.assert_array_equal(
        site_order((3, 4), "column_major"), [0, 4, 8, 1, 5, 9, 2, 6, 10, 3, 7, 11]
    )
    for ordering in ORDERINGS:
        p = site_order((3, 4), ordering)
        assert p.dtype == np.int32 and p.shape == (12,)
        np.testing.assert_array_equal(np.sort(p), np.arange(12))


def test_site_order_refuses_unknown():
    with pytest.raises(DistillError) as err:
        site_order((3, 4), "spiral")
    assert "'spiral'" in str(err.value) and all(o in str(err.value) for o in ORDERINGS)
    with pytest.raises(DistillError, match="image_shape"):
        site_order((3, 0), "snake")


# ----------------------------------------------------------------------------- real Fashion-MNIST


def test_real_fashion_mnist():
    folder = DEFAULT_IDX_DIRS["fashion_mnist"]
    if not os.path.isdir(folder):
        pytest.skip(f"{folder} absent (apt-get install dataset-fashion-mnist to run this test)")
    datasets._VERIFIED.clear()  # force the md5 check to run in this test
    start = time.perf_counter()
    ds = load_dataset("fashion_mnist", downsample=2, val_fraction=0.1, seed=0)
    elapsed = time.perf_counter() - start
    assert len(datasets._VERIFIED) == 4  # all four files passed their checksum
    assert len(ds.y_train) + len(ds.y_val) == 60000
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (54000, 6000, 10000)
    assert ds.image_shape == (14, 14) and ds.x_train.shape == (54000, 196)
    for y in (ds.y_train, ds.y_val, ds.y_test):
        assert set(np.unique(y)) == set(range(10))
    np.testing.assert_array_equal(np.bincount(ds.y_test), np.full(10, 1000))
    np.testing.assert_array_equal(np.bincount(ds.y_val), np.full(10, 600))
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0 and ds.x_train.max() > 0.9
    assert elapsed < 10.0, f"loading Fashion-MNIST took {elapsed:.1f} s"


# ----------------------------------------------------------------------------- TFDS


@pytest.fixture
def tfds_spy(monkeypatch):
    """Import tfds and record every data_source call, failing on any download=True."""
    tfds = pytest.importorskip("tensorflow_datasets")
    calls = []
    real = tfds.data_source

    def spy(*args, **kwargs):
        calls.append(kwargs)
        assert kwargs.get("download") is False, "distill must never ask TFDS to download"
        return real(*args, **kwargs)

    monkeypatch.setattr(tfds, "data_source", spy)
    return tfds, calls


def test_tfds_mock_mnist(tmp_path, tfds_spy):
    tfds, calls = tfds_spy
    n = 12
    with tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load_dataset("tfds:mnist", data_dir=str(tmp_path), val_fraction=0.0)
        ref = tfds.data_source("mnist", split="train", data_dir=str(tmp_path), download=False)
        ref_images = np.stack([ref[i]["image"] for i in range(n)])
        ref_labels = np.array([ref[i]["label"] for i in range(n)])
        ds_down = load_dataset("tfds:mnist", data_dir=str(tmp_path), downsample=2,
                               val_fraction=0.25, seed=1)
    assert [c["split"] for c in calls[:2]] == ["train", "test"]
    assert ds.name == "tfds:mnist" and ds.image_shape == (28, 28) and ds.num_classes == 10
    assert ds.x_train.shape == (n, 784) and ds.x_test.shape == (n, 784)
    assert ds.x_val.shape == (0, 784)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0 and ds.x_train.max() > 0.5
    np.testing.assert_allclose(ds.x_train, ref_images.reshape(n, 784) / 255.0, atol=1e-7)
    np.testing.assert_array_equal(ds.y_train, ref_labels)
    assert ds_down.image_shape == (14, 14)
    assert len(ds_down.y_train) + len(ds_down.y_val) == n and len(ds_down.y_test) == n


def test_tfds_mock_color_is_averaged(tmp_path, tfds_spy):
    tfds, _ = tfds_spy
    n = 5
    with tfds.testing.mock_data(num_examples=n, policy=tfds.testing.MockPolicy.USE_CODE):
        ds = load_dataset("tfds:cifar10", data_dir=str(tmp_path), val_fraction=0.0)
        ref = tfds.data_source("cifar10", split="test", data_dir=str(tmp_path), download=False)
        ref_images = np.stack([ref[i]["image"] for i in range(n)])
    assert ref_images.shape == (n, 32, 32, 3)
    assert ds.image_shape == (32, 32) and ds.x_test.shape == (n, 1024)
    gray = ref_images.astype(np.float64).mean(axis=3).reshape(n, 1024) / 255.0
    np.testing.assert_allclose(ds.x_test, gray, atol=1e-6)


def test_tfds_absent_refused_without_download(tmp_path, tfds_spy):
    _, calls = tfds_spy
    start = time.perf_counter()
    with pytest.raises(DistillError) as err:
        load_dataset("tfds:mnist", data_dir=str(tmp_path))
    msg = str(err.value)
    assert str(tmp_path) in msg and "never downloads" in msg and "tfds build mnist" in msg
    assert "\n" not in msg
    assert calls and all(c["download"] is False for c in calls)
    assert time.perf_counter() - start < 5.0
    with pytest.raises(DistillError, match="does not exist"):
        load_dataset("tfds:mnist", data_dir=str(tmp_path / "missing"))
    with pytest.raises(DistillError, match="unknown TFDS dataset"):
        load_dataset("tfds:no_such_dataset_xyz", data_dir=str(tmp_path))
    with pytest.raises(DistillError, match="empty TFDS name"):
        load_dataset("tfds:")
