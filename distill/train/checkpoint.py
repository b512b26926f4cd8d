"""Resumable training: TrainState checkpoints (orbax CheckpointManager) and stop requests.

Every training phase (`distill.train.loop.fit`) given a `Checkpointing` saves, every
`every` epochs, its TrainState together with the loop's position and history; when asked to
stop (SIGTERM, SIGINT: `stop_on_signals`) it saves at the current step and raises
`RunInterrupted`. Run again with the same checkpoint folder, `fit` continues from the newest
checkpoint, or — when the phase had finished — restores its result without training. Batch
order and RNG draws are functions of (seed, epoch, step), so the continued run computes exactly
what the uninterrupted one would have.

orbax writes each checkpoint into a temporary folder and renames it when complete, so a
process killed at any moment (kill -9 included) leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import jax

from distill.errors import DistillError
from distill.io import _ocp, _one_line, _quiet_orbax

__all__ = ["Checkpointing", "RunInterrupted", "request_stop", "stop_requested", "clear_stop", "stop_on_signals"]


class RunInterrupted(Exception):
    """Training stopped on request (a signal) after saving a checkpoint; the run can be resumed."""

    def __init__(self, signal_name: str):
        super().__init__(f"stopped by {signal_name}")
        self.signal_name = signal_name


_STOP = threading.Event()
_STOP_REASON = ["SIGTERM"]


def request_stop(reason: str = "SIGTERM") -> None:
    """Ask every running `fit` to save a checkpoint and raise RunInterrupted at its next step."""
    _STOP_REASON[0] = reason
    _STOP.set()


def stop_requested() -> str | None:
    """The reason a stop was requested (e.g. 'SIGINT'), or None."""
    return _STOP_REASON[0] if _STOP.is_set() else None


def clear_stop() -> None:
    _STOP.clear()


@contextlib.contextmanager
def stop_on_signals() -> Iterator[None]:
    """While inside: SIGTERM and the first SIGINT request a clean stop (checkpoint, then
    RunInterrupted); a second SIGINT interrupts at once (KeyboardInterrupt). Handlers are
    restored on exit. Only the main thread can install handlers; elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, frame):
        request_stop("SIGTERM")

    def on_int(signum, frame):
        if _STOP.is_set():
            raise KeyboardInterrupt
        request_stop("SIGINT")

    old = {signal.SIGTERM: signal.signal(signal.SIGTERM, on_term), signal.SIGINT: signal.signal(signal.SIGINT, on_int)}
    clear_stop()
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        clear_stop()


@dataclass(frozen=True)
class Checkpointing:
    """Where and how often training phases save their TrainState.

    root: the folder of this phase's checkpoints (created when first needed); every: epochs
    between checkpoints; keep: newest checkpoints kept. `child(name)` is the checkpointing of a
    sub-phase (one folder per layer of a layer-wise phase, per seed of a comparison).
    """

    root: Path
    every: int = 1
    keep: int = 2

    def child(self, name: str) -> "Checkpointing":
        return Checkpointing(self.root / name, self.every, self.keep)

    def _manager(self):
        ocp = _ocp()
        return ocp.CheckpointManager(
            self.root.absolute(),
            options=ocp.CheckpointManagerOptions(max_to_keep=self.keep, enable_async_checkpointing=False,
                                                 create=True))

    def save(self, step: int, state: Any, loop: dict) -> None:
        """Save `state` (a pytree of arrays) and `loop` (JSON: position, history) as checkpoint `step`."""
        ocp = _ocp()
        try:
            with _quiet_orbax():
                mgr = self._manager()
                mgr.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                                       loop=ocp.args.JsonSave(loop)), force=True)
                mgr.wait_until_finished()
                mgr.close()
        except OSError as err:
            raise DistillError(f"could not write a checkpoint to {self.root} ({_one_line(err)}); check the disk "
                               "has space and the folder is writable") from None

    def latest(self, like: Any) -> tuple[Any, dict] | None:
        """(state, loop) of the newest checkpoint, restored with the structure, shapes, dtypes and
        shardings of `like`; None when there is none yet."""
        if not self.root.is_dir():
            return None
        ocp = _ocp()
        with _quiet_orbax():
            mgr = self._manager()
            try:
                step = mgr.latest_step()
                if step is None:
                    return None
                abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
                try:
                    got = mgr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                    loop=ocp.args.JsonRestore()))
                except Exception as err:  # noqa: BLE001 - a checkpoint of another model or config
                    raise DistillError(
                        f"the checkpoint in {self.root} does not match this run ({_one_line(err)}); it was written "
                        "by a different config or version: remove the folder to start this phase afresh") from None
                return got.state, dict(got.loop)
            finally:
                mgr.close()
