"""Datasets for distillation: loading, splitting, downsampling and pixel orderings.

Every loader returns a `Dataset` of flattened grayscale images (float32 in [0, 1], row-major
pixel order) with int32 labels and three disjoint splits:

* ``test``: the official test split, untouched (for ``digits``, which has none, a fixed
  stratified 20 % split made with seed 0, see `load_dataset`);
* ``val``: a stratified ``val_fraction`` of the official train split, drawn with ``seed``;
* ``train``: the rest of the official train split, optionally subsampled to
  ``train_fraction`` (stratified, seeded) for few-data experiments.

Sources: scikit-learn's bundled ``digits``; ``mnist`` / ``fashion_mnist`` from a folder of the
four standard IDX files (MD5-checked); ``tfds:<name>`` from an already prepared
TensorFlow-Datasets folder (read through ``tfds.data_source``; distill never downloads).

Nothing here unpickles or evaluates user files: IDX files are parsed byte by byte.
"""

from __future__ import annotations

import gzip
import hashlib
import math
import os
import zlib
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

import numpy as np

from distill.errors import DistillError

__all__ = [
    "DATASETS",
    "DEFAULT_IDX_DIRS",
    "Dataset",
    "load_dataset",
    "read_idx",
]

DATASETS = ("digits", "fashion_mnist", "mnist")  # plus "tfds:<name>"
DEFAULT_IDX_DIRS = {
    "fashion_mnist": "/usr/share/datasets/fashion-mnist",
    "mnist": "/usr/share/datasets/mnist",
}

_TFDS_PREFIX = "tfds:"
_DIGITS_TEST_FRACTION = 0.2
_DIGITS_TEST_SEED = 0

# The four standard IDX files (base names; each may be stored as ``<base>.gz`` or raw).
_IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Published MD5s: base name -> (md5 of the published .gz file, md5 of the raw IDX payload).
# Re-compressed .gz files (e.g. Debian's dataset-fashion-mnist) fail the first check but
# pass the second, which is what matters.
_IDX_CHECKSUMS: dict[str, dict[str, tuple[str, str]] | None] = {
    "fashion_mnist": {
        "train-images-idx3-ubyte": (
            "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
            "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        ),
        "train-labels-idx1-ubyte": (
            "25c81989df183df01b3e8a0aad5dffbe",
            "9018921c3c673c538a1fc5bad174d6f9",
        ),
        "t10k-images-idx3-ubyte": (
            "bef4ecab320f06d8554ea6380940ec79",
            "8181f5470baa50b63fa0f6fddb340f0a",
        ),
        "t10k-labels-idx1-ubyte": (
            "bb300cfdad3c16e7a12a480ee83cd310",
            "15d484375f8d13e6eb1aabb0c3f46965",
        ),
    },
    "mnist": {
        "train-images-idx3-ubyte": (
            "f68b3c2dcbeaaa9fbdd348bbdeb94873",
            "6bbc9ace898e44ae57da46a324031adb",
        ),
        "train-labels-idx1-ubyte": (
            "d53e105ee54ea40749a09fcbcd1e9432",
            "a25bea736e30d166cdddb491f175f624",
        ),
        "t10k-images-idx3-ubyte": (
            "9fb629c4189551a2d022fa330f9573f3",
            "2646ac647ad5339dbf082846283269ea",
        ),
        "t10k-labels-idx1-ubyte": (
            "ec29112dd5afa0611ce80d1b7f02629c",
            "27ae3e4e09519cfbb04c329615203637",
        ),
    },
}

_IDX_FIX = {
    "fashion_mnist": "run `apt-get install dataset-fashion-mnist` or set data.data_dir=...",
    "mnist": (
        "put the four MNIST IDX files (.gz or raw) in that folder or set data.data_dir=..."
    ),
}
_IDX_REPAIR = {
    "fashion_mnist": (
        "re-install it (`apt-get install --reinstall dataset-fashion-mnist`) or re-download it"
    ),
    "mnist": "re-download the MNIST IDX files",
}

# IDX dtype code -> big-endian numpy dtype.
_IDX_DTYPES = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# Files whose checksum already passed in this process: (path, size, mtime_ns, table entry).
_VERIFIED: set[tuple[str, int, int, tuple[str, str]]] = set()


@dataclass(frozen=True)
class Dataset:
    """Flattened grayscale images with train / val / test splits.

    ``x_*`` are ``(N, H*W)`` float32 in [0, 1] in row-major pixel order; ``y_*`` are ``(N,)``
    int32 class indices in ``[0, num_classes)``. ``val`` is carved from the official train
    split with the load seed; ``test`` is the official test split, untouched.
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    image_shape: tuple[int, int]
    num_classes: int

    @property
    def n_features(self) -> int:
        """Number of pixels per image, ``H * W``."""
        return int(self.image_shape[0] * self.image_shape[1])


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    downsample: int = 1,
    val_fraction: float = 0.1,
    train_fraction: float = 1.0,
    seed: int = 0,
) -> Dataset:
    """Load a dataset by name and split it into train / val / test.

    Args:
      name: ``"digits"``, ``"fashion_mnist"``, ``"mnist"`` or ``"tfds:<name>"``.
        * ``digits``: scikit-learn's bundled 8x8 digits (values 0..16, divided by 16). It has
          no official test split, so a FIXED stratified 20 % of it is the test split, drawn
          with seed 0 independently of ``seed``: the test set never changes.
        * ``fashion_mnist`` / ``mnist``: a folder holding the four standard IDX files
          (``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
          ``t10k-images-idx3-ubyte``, ``t10k-labels-idx1-ubyte``, each ``.gz`` or raw),
          ``data_dir`` or `DEFAULT_IDX_DIRS`. Every file is MD5-checked against the
          published checksums (of the .gz file, or else of the decompressed payload).
        * ``tfds:<name>``: a TensorFlow-Datasets dataset already prepared (array_record or
          parquet) in ``data_dir`` (default ``$TFDS_DATA_DIR`` or ``~/tensorflow_datasets``),
          splits ``train`` and ``test``, keys ``image`` (H, W, C) uint8 and ``label``. Pixels
          are divided by 255; with C > 1 channels the image is converted to grayscale by
          averaging the channels. distill never downloads: prepare it elsewhere with
          ``tfds build <name> --file_format=array_record``.
      data_dir: folder to read from (IDX folder, or TFDS data dir); ``None`` = default.
      downsample: integer k >= 1; average-pool k x k blocks (H and W must be divisible by k).
      val_fraction: in [0, 1): stratified fraction of the official train split held out as
        validation set, drawn with ``seed``.
      train_fraction: in (0, 1]: stratified fraction of the remaining train examples kept
        (seeded; at least one example per class). The validation set does not depend on it.
      seed: seed for the validation carve-out and the train subsample.

    Returns:
      A `Dataset`; within each split, examples keep their original order.
    """
    if not isinstance(name, str) or not name:
        raise DistillError(
            f"data.name must be a non-empty string, got {name!r}; "
            f"use one of {', '.join(DATASETS)} or tfds:<name>"
        )
    k = _check_int(downsample, "data.downsample", minimum=1)
    vf = _check_fraction(val_fraction, "data.val_fraction", low_open=False, high_open=True)
    tf_ = _check_fraction(train_fraction, "data.train_fraction", low_open=True, high_open=False)
    seed = _check_int(seed, "data.seed", minimum=0)

    if name == "digits":
        images, labels, num_classes = _load_digits()
        test_idx, train_idx = _stratified_split(
            labels, _DIGITS_TEST_FRACTION, np.random.default_rng(_DIGITS_TEST_SEED)
        )
        train_images, train_labels = images[train_idx], labels[train_idx]
        test_images, test_labels = images[test_idx], labels[test_idx]
        scale = 16.0
    elif name in DEFAULT_IDX_DIRS:
        folder = data_dir if data_dir is not None else DEFAULT_IDX_DIRS[name]
        train_images, train_labels, test_images, test_labels = _load_idx_folder(
            folder, checksums=_IDX_CHECKSUMS.get(name), dataset=name
        )
        num_classes = 10
        scale = 255.0
    elif name.startswith(_TFDS_PREFIX):
        train_images, train_labels, test_images, test_labels, num_classes = _load_tfds(
            name[len(_TFDS_PREFIX):], data_dir
        )
        scale = 1.0  # _load_tfds already returns float32 in [0, 1]
    else:
        raise DistillError(
            f"unknown dataset {name!r}; allowed: {', '.join(DATASETS)} or tfds:<name> "
            f"(e.g. tfds:mnist)"
        )

    for split, y in (("train", train_labels), ("test", test_labels)):
        if y.size and (y.min() < 0 or y.max() >= num_classes):
            raise DistillError(
                f"dataset {name!r} has {split} labels outside [0, {num_classes}) "
                f"(found {int(y.min())}..{int(y.max())}); fix or re-download the data"
            )

    h, w = int(train_images.shape[1]), int(train_images.shape[2])
    if h % k or w % k:
        raise DistillError(
            f"data.downsample={k} does not divide the {h}x{w} images of {name!r}; "
            f"choose a k that divides both {h} and {w}"
        )
    image_shape = (h // k, w // k)

    rng = np.random.default_rng(seed)
    val_idx, rest_idx = _stratified_split(train_labels, vf, rng)
    if tf_ < 1.0:
        keep_rel, _ = _stratified_split(train_labels[rest_idx], tf_, rng, min_per_class=1)
        rest_idx = rest_idx[keep_rel]

    def prep(images: np.ndarray) -> np.ndarray:
        return _to_features(images, scale, k)

    return Dataset(
        name=name,
        x_train=prep(train_images[rest_idx]),
        y_train=train_labels[rest_idx].astype(np.int32),
        x_val=prep(train_images[val_idx]),
        y_val=train_labels[val_idx].astype(np.int32),
        x_test=prep(test_images),
        y_test=test_labels.astype(np.int32),
        image_shape=image_shape,
        num_classes=int(num_classes),
    )


def read_idx(path) -> np.ndarray:
    """Read an IDX file (``.gz``-compressed if the name ends in ``.gz``, else raw).

    Validates the structure: magic ``0x00 0x00 <dtype code> <ndim>`` with a known dtype code
    (0x08 ubyte, 0x09 byte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E float64), ``ndim`` >= 1,
    and a payload of exactly ``prod(dims) * itemsize`` bytes. No checksum is checked here.
    Returns an array of shape ``dims`` in native byte order.
    """
    path = Path(path)
    _, raw = _read_idx_bytes(path)
    return _parse_idx(raw, path)


# --------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------


def _check_int(value, what: str, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise DistillError(f"{what} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_fraction(value, what: str, *, low_open: bool, high_open: bool) -> float:
    interval = f"{'(' if low_open else '['}0, 1{')' if high_open else ']'}"
    ok = isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok:
        v = float(value)
        ok = (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1)
    if not ok:
        raise DistillError(f"{what} must be a number in {interval}, got {value!r}")
    return float(value)


# --------------------------------------------------------------------------------------
# Splitting and feature preparation
# --------------------------------------------------------------------------------------


def _stratified_split(
    labels: np.ndarray, fraction: float, rng: np.random.Generator, *, min_per_class: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into (picked, rest) with ``picked`` a stratified ``fraction``.

    The total picked is ``round(fraction * N)``, distributed over classes by largest
    remainder (so class proportions are kept); each class then gets at least
    ``min_per_class`` picks where it has that many examples. Both index arrays are sorted.
    """
    labels = np.asarray(labels)
    n = labels.shape[0]
    if n == 0 or fraction <= 0:
        return np.zeros(0, dtype=np.int64), np.arange(n, dtype=np.int64)
    classes, counts = np.unique(labels, return_counts=True)
    exact = fraction * counts
    quota = np.floor(exact).astype(np.int64)
    extra = int(round(fraction * n)) - int(quota.sum())
    if extra > 0:
        # Largest remainder first; ties broken randomly (seeded) rather than by class id.
        tiebreak = rng.random(len(classes))
        order = np.lexsort((tiebreak, -(exact - quota)))
        quota[order[:extra]] += 1
    quota = np.minimum(np.maximum(quota, np.minimum(min_per_class, counts)), counts)
    picked = []
    for c, q in zip(classes, quota):
        if q:
            members = np.flatnonzero(labels == c)
            picked.append(rng.choice(members, size=int(q), replace=False))
    picked_idx = np.sort(np.concatenate(picked)) if picked else np.zeros(0, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    mask[picked_idx] = False
    return picked_idx.astype(np.int64), np.flatnonzero(mask).astype(np.int64)


def _to_features(images: np.ndarray, scale: float, k: int) -> np.ndarray:
    """(N, H, W) -> (N, H/k * W/k) float32: divide by ``scale`` and average-pool k x k."""
    n, h, w = images.shape
    x = images.astype(np.float32)
    if scale != 1.0:
        np.divide(x, np.float32(scale), out=x)
    if k > 1:
        x = x.reshape(n, h // k, k, w // k, k).mean(axis=(2, 4), dtype=np.float32)
    x = np.clip(x, 0.0, 1.0, out=x)  # guard float rounding of the pooled average
    return np.ascontiguousarray(x.reshape(n, x.shape[1] * x.shape[2]), dtype=np.float32)


# --------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------


def _load_digits() -> tuple[np.ndarray, np.ndarray, int]:
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # (1797, 8, 8), values 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    return images, labels, 10


# --------------------------------------------------------------------------------------
# IDX files
# --------------------------------------------------------------------------------------


def _read_idx_bytes(path: Path) -> tuple[bytes, bytes]:
    """Return (bytes as stored on disk, decompressed IDX bytes)."""
    try:
        stored = path.read_bytes()
    except FileNotFoundError:
        raise DistillError(f"IDX file {path} not found; check the path") from None
    except OSError as err:
        raise DistillError(f"cannot read IDX file {path}: {err.strerror or err}") from None
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(stored)
        except (OSError, EOFError, zlib.error) as err:
            raise DistillError(
                f"truncated or corrupt gzip file {path} ({err}); re-download it"
            ) from None
    else:
        raw = stored
    return stored, raw


def _parse_idx(raw: bytes, path: Path) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES or raw[3] < 1:
        head = raw[:4].hex() or "empty"
        raise DistillError(
            f"truncated or corrupt IDX file {path}: bad magic 0x{head} (expected "
            f"0x0000TTNN with a known dtype code TT and NN >= 1 dims); re-download it"
        )
    dtype = _IDX_DTYPES[raw[2]]
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DistillError(
            f"truncated or corrupt IDX file {path}: header needs {header} bytes, file has "
            f"{len(raw)}; re-download it"
        )
    dims = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise DistillError(
            f"truncated or corrupt IDX file {path}: dims {dims} need {expected} payload "
            f"bytes, found {len(raw) - header}; re-download it"
        )
    data = np.frombuffer(raw, dtype=dtype, count=math.prod(dims), offset=header)
    return data.reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx_file(folder: Path, base: str, dataset: str) -> Path:
    for candidate in (folder / f"{base}.gz", folder / base):
        if candidate.is_file():
            return candidate
    raise DistillError(
        f"{dataset}: neither {base}.gz nor {base} found in {folder}; "
        f"{_IDX_FIX.get(dataset, 'set data.data_dir=... to a folder holding the IDX files')}"
    )


def _verify_md5(path: Path, stored: bytes, raw: bytes, expected: tuple[str, str],
                dataset: str) -> None:
    gz_md5, raw_md5 = expected
    if path.name.endswith(".gz") and hashlib.md5(stored).hexdigest() == gz_md5:
        return
    found = hashlib.md5(raw).hexdigest()
    if found == raw_md5:
        return
    raise DistillError(
        f"md5 mismatch for {path}: decompressed IDX payload has md5 {found}, expected "
        f"{raw_md5} (or .gz md5 {gz_md5}); the file is corrupt or not {dataset}: "
        f"{_IDX_REPAIR.get(dataset, 're-download it')}"
    )


def _load_idx_folder(
    folder,
    checksums: dict[str, tuple[str, str]] | None = None,
    *,
    dataset: str = "mnist",
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the four standard IDX files of ``folder``.

    ``checksums`` maps each base name to (md5 of the .gz file, md5 of the raw IDX bytes);
    ``None`` skips verification (tests). Returns uint8 (N, H, W) images and int64 labels for
    train and test.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise DistillError(
            f"{dataset}: data folder {folder} does not exist; "
            f"{_IDX_FIX.get(dataset, 'set data.data_dir=... to a folder holding the IDX files')}"
        )
    arrays = {}
    for base in _IDX_FILES:
        path = _find_idx_file(folder, base, dataset)
        stored, raw = _read_idx_bytes(path)
        if checksums is not None:
            expected = tuple(checksums[base])
            st = path.stat()
            key = (str(path.resolve()), st.st_size, st.st_mtime_ns, expected)
            if key not in _VERIFIED:
                _verify_md5(path, stored, raw, expected, dataset)
                _VERIFIED.add(key)
        del stored
        arrays[base] = (_parse_idx(raw, path), path)
        del raw

    out = []
    for split in ("train", "t10k"):
        images, ipath = arrays[f"{split}-images-idx3-ubyte"]
        labels, lpath = arrays[f"{split}-labels-idx1-ubyte"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DistillError(
                f"{ipath} must hold uint8 images of shape (N, H, W), found {images.dtype} "
                f"{images.shape}; re-download it"
            )
        if labels.ndim != 1 or labels.dtype.kind not in "iu":
            raise DistillError(
                f"{lpath} must hold integer labels of shape (N,), found {labels.dtype} "
                f"{labels.shape}; re-download it"
            )
        if labels.shape[0] != images.shape[0]:
            raise DistillError(
                f"{ipath} has {images.shape[0]} images but {lpath} has {labels.shape[0]} "
                f"labels; re-download both"
            )
        out += [images, labels.astype(np.int64)]
    return out[0], out[1], out[2], out[3]


# --------------------------------------------------------------------------------------
# TensorFlow Datasets
# --------------------------------------------------------------------------------------


def _tfds_default_dir() -> str:
    return os.environ.get("TFDS_DATA_DIR") or os.path.expanduser("~/tensorflow_datasets")


def _load_tfds(tfds_name: str, data_dir: str | None):
    """Read splits train/test of an already prepared TFDS dataset; never downloads."""
    if not tfds_name:
        raise DistillError("empty TFDS name in 'tfds:'; use e.g. tfds:mnist")
    looked = data_dir if data_dir is not None else _tfds_default_dir()
    if data_dir is not None and not Path(data_dir).is_dir():
        raise DistillError(
            f"TFDS data_dir {data_dir} does not exist; point data.data_dir at a folder "
            f"holding a prepared {tfds_name} (distill never downloads)"
        )
    import tensorflow_datasets as tfds  # lazy: slow import

    not_found = getattr(getattr(tfds.core, "registered", None), "DatasetNotFoundError", ())
    sources = {}
    for split in ("train", "test"):
        try:
            sources[split] = tfds.data_source(
                tfds_name, split=split, data_dir=data_dir, download=False
            )
        except not_found:
            raise DistillError(
                f"unknown TFDS dataset {tfds_name!r}; check the name against the TFDS catalog"
            ) from None
        except (NotImplementedError, FileNotFoundError, ValueError, OSError, KeyError,
                AssertionError) as err:
            base = tfds_name.split("/")[0].split(":")[0]
            where = Path(looked) / base
            state = (
                f"is not prepared in array_record/parquet format in {where} "
                f"({type(err).__name__} from tfds)"
                if where.is_dir()
                else f"was not found under {looked} (no folder {where})"
            )
            raise DistillError(
                f"TFDS dataset {tfds_name!r} (split {split!r}) {state}; distill never "
                f"downloads: prepare it elsewhere with `tfds build {base} "
                f"--file_format=array_record` and set data.data_dir=... to that data dir"
            ) from None

    num_classes = None
    try:
        num_classes = int(sources["train"].dataset_info.features["label"].num_classes)
    except Exception:  # noqa: BLE001 - label feature without num_classes: infer below
        num_classes = None

    arrays = []
    for split in ("train", "test"):
        x, y = _read_tfds_source(sources[split], tfds_name, split)
        arrays += [x, y]
    if num_classes is None:
        num_classes = int(max(arrays[1].max(initial=-1), arrays[3].max(initial=-1))) + 1
    return arrays[0], arrays[1], arrays[2], arrays[3], num_classes


def _read_tfds_source(source, tfds_name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    n = len(source)
    if n == 0:
        raise DistillError(f"TFDS dataset {tfds_name!r} split {split!r} is empty")
    x = None
    y = np.empty(n, dtype=np.int64)
    for i in range(n):
        example = source[i]
        if "image" not in example or "label" not in example:
            raise DistillError(
                f"TFDS dataset {tfds_name!r} has keys {sorted(example)}; distill needs "
                f"'image' and 'label' (image classification datasets only)"
            )
        img = np.asarray(example["image"])
        if img.ndim == 2:
            img = img[:, :, None]
        if img.ndim != 3 or img.dtype != np.uint8:
            raise DistillError(
                f"TFDS dataset {tfds_name!r}: 'image' must be (H, W, C) uint8, found "
                f"{img.dtype} {img.shape}"
            )
        if x is None:
            x = np.empty((n, img.shape[0], img.shape[1]), dtype=np.float32)
        elif img.shape[:2] != x.shape[1:]:
            raise DistillError(
                f"TFDS dataset {tfds_name!r}: images have varying sizes ({x.shape[1:]} vs "
                f"{img.shape[:2]}); distill needs a fixed image size"
            )
        x[i] = img.mean(axis=2, dtype=np.float32) if img.shape[2] > 1 else img[:, :, 0]
        y[i] = int(example["label"])
    np.divide(x, np.float32(255.0), out=x)
    return x, y
