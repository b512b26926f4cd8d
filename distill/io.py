"""Files that are never half-written: atomic text/JSON writes and atomic orbax checkpoint folders.

A checkpoint folder holds ``params/`` (an orbax StandardCheckpointer checkpoint of a pure nested
dict of arrays) and one JSON description file. Saving writes into a temporary sibling
(``.NAME.tmp-<random>``), waits for orbax's async save, and only then renames it into place;
overwriting renames the old folder aside first, so at every moment a complete checkpoint exists.
Restoring checks key paths, shapes and dtypes against the abstract target first and reads JSON
only (never pickle/eval).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import jax
import numpy as np
from flax import nnx

from distill.errors import DistillError

PARAMS_DIR = "params"
STATE_JSON = "state.json"
_STATE_FORMAT = "distill.state"
_VERSION = 1


def _primary() -> bool:
    """Only process 0 of a multi-process run writes plain files (the others compute the same)."""
    import jax

    return jax.process_index() == 0


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: never a half-written file.
    In a multi-process run only process 0 writes."""
    write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: Path, blob: bytes) -> None:
    """`write_atomic` for bytes. Raises: OSError when the folder is missing or not writable (the
    temporary file is removed)."""
    if not _primary():
        return
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(blob)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def json_safe(obj: Any) -> Any:
    """`obj` with every non-finite float replaced by None (JSON has no NaN), numpy scalars and
    arrays turned into Python numbers and lists, tuples into lists."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_json(path: Path, obj: dict) -> None:
    """Strict JSON (non-finite numbers written as null) through `write_atomic`."""
    write_atomic(path, json.dumps(json_safe(obj), indent=2, sort_keys=False, allow_nan=False) + "\n")


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Temporarily silence orbax's INFO/WARNING absl logging (restored afterwards)."""
    try:
        from absl import logging as absl_logging
    except ImportError:  # pragma: no cover - orbax depends on absl
        yield
        return
    old = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        yield
    finally:
        absl_logging.set_verbosity(old)


def _ocp():
    import orbax.checkpoint as ocp  # imported lazily: orbax is slow to import

    return ocp


def _one_line(err: BaseException, limit: int = 300) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}"


def _rmtree_quiet(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)


def _write_checkpoint_dir(path: Path, params: dict | None, json_name: str, json_text: str, what: str,
                          files: dict[str, bytes] | None = None) -> None:
    """Atomically create directory ``path`` holding ``params/`` (orbax; none when `params` is
    None), ``json_name`` and the extra `files` {name: bytes}.

    Written into a temporary sibling first; an existing ``path`` that holds ``json_name`` is
    swapped out only after the new directory is complete (and restored if the swap fails)."""
    from distill.train.sharding import agree, barrier

    if path.exists() and not (path.is_dir() and (path / json_name).is_file()):
        raise DistillError(
            f"refusing to overwrite {path}: it exists and is not a {what}; "
            "remove it or choose another output path"
        )
    # Host copies: in a multi-process run every process calls orbax with the same folder and
    # process 0 writes the arrays (numpy leaves are the primary process's to write).
    params = None if params is None else jax.tree.map(_host, params)
    multi = jax.process_count() > 1
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if multi:  # one temporary folder for all processes, named by process 0
            tmp = path.parent / f".{path.name}.tmp-{agree(os.getpid())}"
            if _primary():
                tmp.mkdir()
            barrier(f"mkdir {tmp}")
        else:
            tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        mask = os.umask(0)
        os.umask(mask)
        if _primary():
            os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; the checkpoint gets the usual mode
    except OSError as err:
        raise DistillError(
            f"cannot create {what} at {path} ({_one_line(err)}); check the directory is writable"
        ) from None

    old: Path | None = None
    try:
        if params is not None:
            ocp = _ocp()
            with _quiet_orbax():
                with ocp.StandardCheckpointer() as ckptr:
                    ckptr.save(tmp / PARAMS_DIR, params)
                    ckptr.wait_until_finished()  # StandardCheckpointer is async: block until committed
        if _primary():
            for name, blob in (files or {}).items():
                (tmp / name).write_bytes(blob)
            with open(tmp / json_name, "w", encoding="utf-8") as f:
                f.write(json_text + "\n")
                f.flush()
                os.fsync(f.fileno())
            if path.exists():
                # POSIX rename cannot replace a non-empty directory: move the old one aside,
                # move the new one in, then delete the old one.
                old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
                os.replace(path, old)  # replaces the empty placeholder directory
                try:
                    os.replace(tmp, path)
                except BaseException:
                    os.replace(old, path)  # put the previous checkpoint back
                    old = None
                    raise
            else:
                os.replace(tmp, path)
        barrier(f"saved {path}")
    except OSError as err:
        _rmtree_quiet(tmp)
        raise DistillError(
            f"could not write {what} to {path} ({_one_line(err)}); "
            "check the disk has space and the directory is writable"
        ) from None
    except BaseException:
        _rmtree_quiet(tmp)
        raise
    finally:
        if old is not None:
            _rmtree_quiet(old)


def _host(a):
    """A numpy copy of this process's array (PRNG keys stay JAX arrays: numpy has no key type)."""
    from distill.train.sharding import local

    a = local(a)
    if isinstance(a, jax.Array) and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key):
        return a
    return np.asarray(a)


def _json_text(doc: dict, what: str) -> str:
    """JSON for a checkpoint's description file, or a one-line DistillError naming `what`."""
    try:
        return json.dumps(doc, indent=2)
    except (TypeError, ValueError) as err:
        raise DistillError(
            f"{what} is not JSON-serialisable ({_one_line(err)}); "
            "pass only str/int/float/bool/None/list/dict values"
        ) from None


def _flat_shapes(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    out = {}
    for kp, leaf in flat:
        name = ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in kp)
        out[name] = (tuple(leaf.shape), str(np.dtype(leaf.dtype)))
    return out


def _check_stored_shapes(path: Path, step_metadata: Any, target: dict, against: str, fix: str) -> None:
    tree_md = getattr(step_metadata, "item_metadata", step_metadata)
    tree_md = getattr(tree_md, "tree", tree_md)
    if tree_md is None:
        raise ValueError("the checkpoint has no array metadata")
    stored, wanted = _flat_shapes(tree_md), _flat_shapes(target)
    problems = []
    for name in wanted:
        if name not in stored:
            problems.append(f"{name} is missing on disk")
        elif stored[name] != wanted[name]:
            (s_shape, s_dt), (w_shape, w_dt) = stored[name], wanted[name]
            problems.append(
                f"{name} is {s_dt}{list(s_shape)} on disk but expected {w_dt}{list(w_shape)}"
            )
    problems += [f"unexpected array {name} on disk" for name in stored if name not in wanted]
    if problems:
        shown = ", ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        raise DistillError(
            f"could not restore weights from {path / PARAMS_DIR}: they do not match "
            f"{against} ({shown}); the checkpoint is corrupt or was edited, {fix}"
        )


def _restore_params_into(path: Path, abs_params: nnx.State, against: str, fix: str) -> None:
    """Restore ``path/params`` into the (abstract) Param State ``abs_params`` in place,
    checking key paths, shapes and dtypes first; every failure is a one-line DistillError."""
    pdir = path / PARAMS_DIR
    if not pdir.is_dir():
        raise DistillError(
            f"checkpoint at {path} has no {PARAMS_DIR}/ weights directory; it is incomplete, {fix}"
        )
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding),
        nnx.to_pure_dict(abs_params),
    )
    ocp = _ocp()
    try:
        with _quiet_orbax():
            with ocp.StandardCheckpointer() as ckptr:
                # Compare stored shapes/dtypes first: a clearer message than orbax's, and a
                # failed restore leaves un-awaited coroutines that Python reports on stderr.
                _check_stored_shapes(path, ckptr.metadata(pdir), target, against, fix)
                restored = ckptr.restore(pdir, target)
        nnx.replace_by_pure_dict(abs_params, restored)
        for leaf in jax.tree.leaves(abs_params):
            if not isinstance(leaf, jax.Array):
                raise ValueError(f"restored a {type(leaf).__name__} instead of an array")
    except DistillError:
        raise
    except Exception as err:
        raise DistillError(
            f"could not restore weights from {pdir} ({_one_line(err)}); the checkpoint is "
            f"corrupt or does not match {against}, {fix}"
        ) from None


def save_state(module: nnx.Module, path: str | Path, metadata: dict | None = None) -> None:
    """Atomically save any nnx module's whole state (e.g. a trained student) to the directory
    ``path`` (``params/`` via orbax + ``state.json``); restore it with :func:`load_state` into a
    module built with the same architecture. Non-trainable variables (a site order, pairing
    partners, input scales) are saved too, so the checkpoint reproduces the module exactly."""
    if not isinstance(module, nnx.Module):
        raise DistillError(f"save_state expects an nnx.Module, got {type(module).__name__}")
    doc = {
        "format": _STATE_FORMAT,
        "version": _VERSION,
        "module": type(module).__name__,
        "metadata": {} if metadata is None else metadata,
    }
    text = _json_text(doc, "checkpoint metadata")
    path = Path(path).expanduser().absolute()
    _write_checkpoint_dir(
        path, nnx.to_pure_dict(nnx.state(module)), STATE_JSON, text, "model checkpoint"
    )


def load_state(module: nnx.Module, path: str | Path) -> dict:
    """Restore the state saved by :func:`save_state` into ``module`` in place (shapes, dtypes
    and variable paths must match); returns the stored metadata."""
    path = Path(path).expanduser().absolute()
    if not (path / STATE_JSON).is_file():
        raise DistillError(
            f"no model checkpoint at {path} ({STATE_JSON} missing); point to a directory "
            "written by save_state"
        )
    try:
        doc = json.loads((path / STATE_JSON).read_text(encoding="utf-8"))
        metadata = doc.get("metadata", {}) if isinstance(doc, dict) else None
        if not isinstance(metadata, dict):
            raise ValueError("no 'metadata' object")
    except (OSError, UnicodeDecodeError, ValueError) as err:
        raise DistillError(
            f"{path / STATE_JSON} is not a valid model checkpoint file ({_one_line(err)}); "
            "re-run the training that wrote it"
        ) from None
    params = nnx.state(module)
    _restore_params_into(
        path, params, f"the {type(module).__name__} being loaded into",
        "build the module with the architecture it was saved with",
    )
    nnx.update(module, params)
    return metadata
