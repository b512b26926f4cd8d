"""distill: distil trained neural networks into tensor-network students with JAX.

Python entry points (`distill.api`): `load_teacher`, `import_teacher`, `distil`, `load_student`,
`load_config`. Building blocks: `distill.nn` (nnx modules: MPS, MPSHidden, TTLinear, ...),
`distill.tn` (pure contractions, decompositions and feature maps), `distill.train` (the
training step and loop), `distill.teachers`, `distill.students`.
"""

__version__ = "0.2.0"

_API = ("load_teacher", "import_teacher", "distil", "load_student", "load_config")


def __getattr__(name: str):
    # lazy: `import distill` stays light (no jax) until an entry point is used
    if name in _API:
        from distill import api

        return getattr(api, name)
    raise AttributeError(f"module 'distill' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
