"""The dense MLP teacher."""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from flax import nnx
from jax import Array

from distill.errors import DistillError
from distill.nn.common import ACTIVATIONS

_SPEC_KEYS = ("kind", "in_features", "hidden", "n_classes", "activation")


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
