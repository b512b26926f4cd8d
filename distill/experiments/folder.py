"""Run folders that are complete or absent — and resumable when a run is stopped or killed.

A run builds its folder under a hidden staging name next to it, `.NAME.partial-PID`, and
renames it to NAME only when everything is written. A run that fails with an error removes its
staging folder. A run stopped by SIGTERM / SIGINT (after saving a checkpoint) or killed
(SIGKILL, power loss) leaves it: `distill run --resume NAME` continues it, and any other run
that targets NAME, or writes next to it, names it instead of letting it linger.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import shutil
from pathlib import Path

from distill.errors import DistillError

__all__ = ["RunFolder", "default_run_dir", "leftovers"]

_PARTIAL = re.compile(r"^\.(?P<name>.+)\.partial-(?P<pid>\d+)$")


def _multi() -> bool:
    import jax

    return jax.process_count() > 1


def default_run_dir(name: str, suffix: str = "") -> Path:
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{stamp}-{name}{suffix}"


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _nothing_to_resume(final: Path) -> None:
    """Raises: DistillError saying why `final` cannot be resumed: it is complete, or nothing of it was staged."""
    if final.is_dir() and (final / "results.json").is_file():
        raise DistillError(f"{final} is a complete run; there is nothing to resume")
    raise DistillError(f"no interrupted run of {final} to resume (no staging folder {final.parent}/.{final.name}"
                       f".partial-<pid> left by a stopped run); start it with `distill run CONFIG --out {final}`")


def _partials(final: Path) -> list[tuple[Path, int]]:
    parent = final.parent
    if not parent.is_dir():
        return []
    out = []
    for p in parent.iterdir():
        m = _PARTIAL.match(p.name)
        if m and m["name"] == final.name and p.is_dir():
            out.append((p, int(m["pid"])))
    return out


def leftovers(parent: Path) -> list[Path]:
    """Staging folders in `parent` whose process is gone (interrupted or killed runs)."""
    if not parent.is_dir():
        return []
    out = []
    for p in sorted(parent.iterdir()):
        m = _PARTIAL.match(p.name)
        if m and p.is_dir() and not _alive(int(m["pid"])):
            out.append(p)
    return out


class RunFolder:
    """The staging folder of one run (`work`) and the folder it becomes (`final`)."""

    def __init__(self, final: Path, work: Path, resumed: bool):
        self.final, self.work, self.resumed = final, work, resumed
        self._created: list[Path] = []

    @classmethod
    def start(cls, final: str | Path) -> "RunFolder":
        """A fresh staging folder for `final` (in a multi-process run: created by process 0 and
        shared; the others raise if process 0 refused).
        Raises: DistillError if `final` exists and is not empty, if an interrupted run of it is
        waiting to be resumed, or if the folder cannot be created."""
        from distill.train.sharding import agree, is_primary

        final = Path(final)
        if not _multi():
            return cls._start(final, os.getpid())
        pid0 = agree(os.getpid())
        folder, failed = None, 0
        if is_primary():
            try:
                folder = cls._start(final, pid0)
            except DistillError:
                failed = 1
                agree(failed)
                raise
        if agree(failed):
            raise DistillError(f"process 0 could not start the run folder {final} (see its message)")
        return folder or cls(final, final.parent / f".{final.name}.partial-{pid0}", resumed=False)

    @classmethod
    def _start(cls, final: Path, pid: int) -> "RunFolder":
        if final.exists() and (not final.is_dir() or any(final.iterdir())):
            raise DistillError(f"output folder {str(final)!r} already exists and is not empty; choose another --out")
        for path, pid in _partials(final):
            if _alive(pid):
                raise DistillError(f"another distill process (PID {pid}) is writing {final} (in {path.name}); wait for "
                                   "it or choose another --out")
            raise DistillError(f"an interrupted run of {final} is waiting in {path}; continue it with `distill run "
                               f"--resume {final}` or remove that folder")
        missing = [p for p in [final.parent, *final.parent.parents] if not p.exists()]
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
            work = final.parent / f".{final.name}.partial-{pid}"
            work.mkdir()
        except OSError as err:
            raise DistillError(f"cannot create the run folder {final} ({err.strerror or err}); choose an --out in a "
                               "writable place") from None
        folder = cls(final, work, resumed=False)
        folder._created = sorted(missing, key=lambda p: len(p.parts), reverse=True)
        return folder

    @classmethod
    def resume(cls, final: str | Path) -> "RunFolder":
        """The staging folder an interrupted run of `final` left, taken over by this process.
        Raises: DistillError if there is none, if it is still in use, or if `final` is complete."""
        final = Path(final)
        found = _partials(final)
        if not found:
            _nothing_to_resume(final)
        path, pid = max(found, key=lambda t: t[0].stat().st_mtime)
        if _alive(pid):
            raise DistillError(f"the run in {path} is still running (PID {pid}); stop it first (it saves a checkpoint "
                               "on SIGTERM)")
        work = final.parent / f".{final.name}.partial-{os.getpid()}"
        os.replace(path, work)
        return cls(final, work, resumed=True)

    @staticmethod
    def staged_config(final: str | Path) -> Path:
        """The config.yaml an interrupted run of `final` recorded.
        Raises: DistillError if there is no interrupted run of it."""
        found = _partials(Path(final))
        if not found:
            _nothing_to_resume(Path(final))
        path = max(found, key=lambda t: t[0].stat().st_mtime)[0] / "config.yaml"
        if not path.is_file():
            raise DistillError(f"the interrupted run in {path.parent} has no config.yaml; remove it and start again")
        return path

    def finish(self) -> Path:
        """Rename the staging folder to the final name (process 0, after every process is done)."""
        from distill.train.sharding import barrier, is_primary

        barrier(f"finish {self.final}")
        if is_primary():
            if self.final.exists():
                self.final.rmdir()  # empty, checked at start
            os.replace(self.work, self.final)
        barrier(f"finished {self.final}")
        return self.final

    def abort(self) -> None:
        """Remove the staging folder and the parent folders this run created."""
        from distill.train.sharding import is_primary

        if not is_primary():
            return
        shutil.rmtree(self.work, ignore_errors=True)
        for p in self._created:
            try:
                p.rmdir()
            except OSError:
                break
