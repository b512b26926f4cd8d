"""Frozen teacher networks: a dense MLP, its on-disk checkpoint format, and batched
gradient-free forward passes used to precompute teacher outputs for a whole split.

Checkpoint layout (a DIRECTORY at ``path``)::

    path/
      teacher.json   {"format": "distill.teacher", "version": 1,
                      "spec": MLP.spec, "metadata": {...caller's metadata...}}
      params/        orbax StandardCheckpointer checkpoint of the nnx.Param state
                     (a pure nested dict {"hidden_0": {"kernel", "bias"}, ..., "logits": {...}})

Saving is atomic: everything is written into a temporary sibling directory
(``.NAME.tmp-<random>``), orbax's async save is waited on, and only then is the directory
renamed into place. Overwriting an existing checkpoint renames the old one aside
(``.NAME.old-<random>``), renames the new one in, and then deletes the old one, so at every
moment a complete checkpoint exists on disk. Loading reads JSON only (never pickle/eval)
and restores the arrays against the abstract state of the MLP rebuilt from ``spec``, so
shapes and dtypes are checked.

Using the teacher frozen: the teacher is never trained by distillation. Either call it
outside of any ``jax.grad``/``value_and_grad`` (e.g. precompute its outputs once with
:func:`frozen_logits` / :func:`frozen_activations`, which return NumPy arrays and so cannot
carry gradients), or wrap its outputs in ``jax.lax.stop_gradient`` when it is called inside
a differentiated function, and never pass its state to an optimizer.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from distill import layers
from distill.errors import DistillError

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "save_teacher",
    "load_teacher",
    "save_state",
    "load_state",
    "frozen_logits",
    "frozen_activations",
    "mlp_from_spec",
    "TEACHER_JSON",
    "STATE_JSON",
    "PARAMS_DIR",
]

Array = jax.Array

#: Activation name -> elementwise JAX function (the same dict as the student layers use).
ACTIVATIONS: dict[str, Callable[[Array], Array]] = layers.ACTIVATIONS

TEACHER_JSON = "teacher.json"
PARAMS_DIR = "params"
_FORMAT = "distill.teacher"
_VERSION = 1
_SPEC_KEYS = ("kind", "in_features", "hidden", "n_classes", "activation")


# --------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------


def _check_width(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise DistillError(
            f"teacher {name} must be a positive integer, got {value!r}; fix it in the config"
        )
    return int(value)


class MLP(nnx.Module):
    """Dense teacher: x (B, in_features) -> logits (B, n_classes).

    Layers are ``nnx.Linear`` attributes named ``hidden_0``, ``hidden_1``, ..., ``logits``
    so that state paths read e.g. ``("hidden_0", "kernel")``. Each hidden layer is
    ``activation(Linear(x))``; the last layer is linear (logits).
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        n_classes: int,
        *,
        activation: str = "relu",
        rngs: nnx.Rngs,
    ):
        in_features = _check_width("in_features", in_features)
        n_classes = _check_width("n_classes", n_classes)
        if isinstance(hidden, (str, bytes)) or not isinstance(hidden, Sequence):
            raise DistillError(
                f"teacher hidden must be a list of positive layer widths, got {hidden!r}; "
                "fix it in the config (e.g. hidden: [512, 512])"
            )
        hidden = tuple(_check_width(f"hidden width #{i}", h) for i, h in enumerate(hidden))
        if not isinstance(activation, str) or activation not in ACTIVATIONS:
            raise DistillError(
                f"unknown teacher activation {activation!r}; "
                f"use one of {', '.join(sorted(ACTIVATIONS))}"
            )
        # Plain hashable Python values -> static (non-pytree) attributes.
        self._in_features = in_features
        self._hidden = hidden
        self._n_classes = n_classes
        self._activation = activation
        names = tuple(f"hidden_{i}" for i in range(len(hidden))) + ("logits",)
        self.layer_names: tuple[str, ...] = names
        widths = (in_features, *hidden, n_classes)
        for name, d_in, d_out in zip(names, widths[:-1], widths[1:]):
            setattr(self, name, nnx.Linear(d_in, d_out, rngs=rngs))

    @property
    def spec(self) -> dict:
        """JSON-able description from which the MLP can be rebuilt (see :func:`mlp_from_spec`);
        a fresh dict on every access."""
        return {
            "kind": "mlp",
            "in_features": self._in_features,
            "hidden": list(self._hidden),
            "n_classes": self._n_classes,
            "activation": self._activation,
        }

    def _layer(self, name: str) -> nnx.Linear:
        return getattr(self, name)

    def __call__(self, x) -> Array:
        act = ACTIVATIONS[self._activation]
        h = x
        for name in self.layer_names[:-1]:
            h = act(self._layer(name)(h))
        return self._layer("logits")(h)

    def activations(self, x) -> dict[str, Array]:
        """Every layer by name, in forward order:
        ``hidden_0.pre`` (pre-activation), ``hidden_0`` (post-activation), ..., ``logits``."""
        act = ACTIVATIONS[self._activation]
        out: dict[str, Array] = {}
        h = x
        for name in self.layer_names[:-1]:
            pre = self._layer(name)(h)
            h = act(pre)
            out[f"{name}.pre"] = pre
            out[name] = h
        out["logits"] = self._layer("logits")(h)
        return out

    @property
    def activation_names(self) -> tuple[str, ...]:
        """The keys :meth:`activations` returns, in order."""
        names: list[str] = []
        for name in self.layer_names[:-1]:
            names += [f"{name}.pre", name]
        return (*names, "logits")


def mlp_from_spec(spec: dict, *, rngs: nnx.Rngs | None = None) -> MLP:
    """Build an MLP from its ``spec`` dict (DistillError when the spec is malformed)."""
    if not isinstance(spec, dict) or spec.get("kind") != "mlp":
        kind = spec.get("kind") if isinstance(spec, dict) else spec
        raise DistillError(f"unsupported teacher kind {kind!r}; only 'mlp' teachers exist")
    missing = [k for k in _SPEC_KEYS if k not in spec]
    if missing:
        raise DistillError(
            f"teacher spec is missing {', '.join(missing)}; retrain the teacher with "
            "`distill teacher CONFIG`"
        )
    return MLP(
        spec["in_features"],
        spec["hidden"],
        spec["n_classes"],
        activation=spec["activation"],
        rngs=rngs if rngs is not None else nnx.Rngs(0),
    )


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


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


def _param_pure_dict(model: MLP) -> dict:
    """{"hidden_0": {"kernel": Array, "bias": Array}, ...} of the nnx.Param state."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _write_checkpoint_dir(path: Path, params: dict, json_name: str, json_text: str, what: str) -> None:
    """Atomically create directory ``path`` holding ``params/`` (orbax) and ``json_name``.

    Written into a temporary sibling first; an existing ``path`` that holds ``json_name`` is
    swapped out only after the new directory is complete (and restored if the swap fails)."""
    if path.exists() and not (path.is_dir() and (path / json_name).is_file()):
        raise DistillError(
            f"refusing to overwrite {path}: it exists and is not a {what}; "
            "remove it or choose another output path"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        mask = os.umask(0)
        os.umask(mask)
        os.chmod(tmp, 0o777 & ~mask)  # mkdtemp makes 0700; the checkpoint gets the usual mode
    except OSError as err:
        raise DistillError(
            f"cannot create {what} at {path} ({_one_line(err)}); check the directory is writable"
        ) from None

    old: Path | None = None
    try:
        ocp = _ocp()
        with _quiet_orbax():
            with ocp.StandardCheckpointer() as ckptr:
                ckptr.save(tmp / PARAMS_DIR, params)
                ckptr.wait_until_finished()  # StandardCheckpointer is async: block until committed
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


def _json_text(doc: dict, what: str) -> str:
    """JSON for a checkpoint's description file, or a one-line DistillError naming `what`."""
    try:
        return json.dumps(doc, indent=2)
    except (TypeError, ValueError) as err:
        raise DistillError(
            f"{what} is not JSON-serialisable ({_one_line(err)}); "
            "pass only str/int/float/bool/None/list/dict values"
        ) from None


def save_teacher(model: MLP, path: str | Path, metadata: dict) -> None:
    """Atomically write ``model`` (params via orbax) and ``spec`` + ``metadata`` (JSON) to
    the checkpoint directory ``path``; an existing teacher checkpoint there is replaced."""
    if not isinstance(model, MLP):
        raise DistillError(f"save_teacher expects a distill MLP teacher, got {type(model).__name__}")
    if metadata is None:
        metadata = {}
    if not isinstance(metadata, dict):
        raise DistillError(
            f"teacher metadata must be a dict, got {type(metadata).__name__}; pass a dict of "
            "JSON values"
        )
    doc = {"format": _FORMAT, "version": _VERSION, "spec": model.spec, "metadata": metadata}
    text = _json_text(doc, "teacher metadata")
    path = Path(path).expanduser().absolute()
    _write_checkpoint_dir(path, _param_pure_dict(model), TEACHER_JSON, text, "teacher checkpoint")


def _read_teacher_json(path: Path) -> dict:
    jpath = path / TEACHER_JSON
    if not jpath.is_file():
        raise DistillError(
            f"{path} is not a teacher checkpoint ({TEACHER_JSON} is missing); "
            "train one with `distill teacher CONFIG`"
        )
    try:
        doc = json.loads(jpath.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DistillError(
            f"{jpath} is not valid JSON ({_one_line(err)}); the checkpoint is corrupt, "
            "retrain with `distill teacher CONFIG`"
        ) from None
    if (
        not isinstance(doc, dict)
        or not isinstance(doc.get("spec"), dict)
        or not isinstance(doc.get("metadata", {}), dict)
    ):
        raise DistillError(
            f"{jpath} lacks a 'spec' object (or 'metadata' is not an object); the checkpoint "
            "is corrupt, retrain with `distill teacher CONFIG`"
        )
    return doc


def _json_norm(value: Any) -> Any:
    """Normalise through JSON so tuples compare equal to lists, etc."""
    try:
        return json.loads(json.dumps(value))
    except (TypeError, ValueError):
        return value


def _fmt(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


_MISSING = object()


def _check_expected(path: Path, spec: dict, metadata: dict, expected: dict) -> None:
    if not isinstance(expected, dict):
        raise DistillError(f"expected must be a dict of spec/metadata values, got {expected!r}")
    clauses = []
    for key, want in expected.items():
        have = spec[key] if key in spec else metadata.get(key, _MISSING)
        if have is _MISSING:
            clauses.append(f"records no {key} but the config says {_fmt(want)}")
        elif _json_norm(have) != _json_norm(want):
            clauses.append(f"was trained with {key}={_fmt(have)} but the config says {_fmt(want)}")
    if clauses:
        raise DistillError(
            f"teacher checkpoint at {path} {'; and '.join(clauses)}; retrain the teacher "
            "with `distill teacher CONFIG` or fix the config to match"
        )


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


def load_teacher(path: str | Path, expected: dict | None = None) -> tuple[MLP, dict]:
    """Load a checkpoint written by :func:`save_teacher`; returns ``(model, metadata)``.

    ``expected`` maps spec keys (in_features, hidden, n_classes, activation) and/or metadata
    keys (dataset, downsample, ...) to the values the caller's config requires; any that
    differ from what the checkpoint recorded raise DistillError naming both values.
    """
    path = Path(path).expanduser().absolute()
    if not path.exists():
        raise DistillError(
            f"no teacher checkpoint at {path}; train one with `distill teacher CONFIG`"
        )
    if not path.is_dir():
        raise DistillError(
            f"{path} is a file, not a teacher checkpoint directory; point to the directory "
            "written by `distill teacher CONFIG`"
        )
    doc = _read_teacher_json(path)
    spec, metadata = doc["spec"], dict(doc.get("metadata", {}))
    if expected:
        _check_expected(path, spec, metadata, expected)

    try:
        abstract = nnx.eval_shape(lambda: mlp_from_spec(spec))
    except DistillError as err:
        raise DistillError(f"invalid spec in {path / TEACHER_JSON}: {err}") from None
    except Exception as err:  # wrong JSON types in the spec, e.g. a string width
        raise DistillError(
            f"invalid spec in {path / TEACHER_JSON} ({_one_line(err)}); retrain with "
            "`distill teacher CONFIG`"
        ) from None
    graphdef, abs_params, rest = nnx.split(abstract, nnx.Param, ...)
    if len(jax.tree.leaves(rest)):  # an MLP only holds Params
        raise DistillError("internal: teacher MLP holds non-Param state")  # pragma: no cover

    _restore_params_into(
        path, abs_params, f"the spec in {TEACHER_JSON}", "retrain with `distill teacher CONFIG`"
    )
    model = nnx.merge(graphdef, abs_params, rest)
    return model, metadata


STATE_JSON = "state.json"
_STATE_FORMAT = "distill.state"


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


# --------------------------------------------------------------------------------------
# Frozen, batched forward passes
# --------------------------------------------------------------------------------------


@functools.partial(jax.jit, static_argnums=(0, 3))
def _forward(graphdef, params, x, names):
    model = nnx.merge(graphdef, params)
    acts = model.activations(x)
    return {n: jax.lax.stop_gradient(acts[n]) for n in names}


def _run_frozen(model: MLP, x, names: tuple[str, ...], batch_size: int) -> dict[str, np.ndarray]:
    if not isinstance(model, MLP):
        raise DistillError(f"expected a distill MLP teacher, got {type(model).__name__}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size <= 0:
        raise DistillError(f"batch_size must be a positive integer, got {batch_size!r}")
    x = np.asarray(x, dtype=np.float32)
    d = model.spec["in_features"]
    if x.ndim != 2 or x.shape[1] != d:
        raise DistillError(
            f"teacher expects inputs of shape (N, {d}) but got {x.shape}; check the data's "
            "image shape / downsample match the teacher's"
        )
    graphdef, params = nnx.split(model)
    n = x.shape[0]
    bs = int(min(batch_size, max(n, 1)))
    chunks: dict[str, list[np.ndarray]] = {k: [] for k in names}
    for start in range(0, n, bs):
        xb = x[start : start + bs]
        m = xb.shape[0]
        if m < bs:  # pad the last batch so every call hits the same compiled function
            xb = np.concatenate([xb, np.zeros((bs - m, d), np.float32)], axis=0)
        out = _forward(graphdef, params, xb, names)
        for k in names:
            chunks[k].append(np.asarray(out[k])[:m])
    if n == 0:
        shapes = jax.eval_shape(
            lambda p, xx: _forward(graphdef, p, xx, names),
            params,
            jax.ShapeDtypeStruct((1, d), jnp.float32),
        )
        return {k: np.zeros((0, *shapes[k].shape[1:]), np.float32) for k in names}
    return {k: np.concatenate(v, axis=0) for k, v in chunks.items()}


def frozen_logits(model: MLP, x, batch_size: int = 4096) -> np.ndarray:
    """Teacher logits for all of ``x`` (N, in_features) as a float32 NumPy array (N, n_classes),
    computed with a jitted forward in batches of ``batch_size``, with no gradient tracking."""
    return _run_frozen(model, x, ("logits",), batch_size)["logits"]


def frozen_activations(
    model: MLP, x, names: Sequence[str], batch_size: int = 4096
) -> dict[str, np.ndarray]:
    """Named teacher activations (see :meth:`MLP.activations`) for all of ``x`` as NumPy
    arrays, computed in jitted batches with no gradient tracking."""
    if isinstance(names, str):
        names = [names]
    names = tuple(names)
    known = model.activation_names if isinstance(model, MLP) else ()
    unknown = [n for n in names if n not in known]
    if unknown:
        raise DistillError(
            f"unknown teacher activation name(s) {', '.join(map(repr, unknown))}; "
            f"available: {', '.join(known)}"
        )
    return _run_frozen(model, x, names, batch_size)
