"""The result of one run, as one typed record written to results.json.

Keys are stable (tests/test_results_schema.py keeps them): tools that read results.json of
earlier runs keep working. All accuracies are fractions in [0, 1] on the test split; latencies
are milliseconds per batch (`latency_ms[str(batch)]`) and microseconds per sample
(`latency_us_per_sample[str(batch)]`), from the median of 20 jitted calls after compilation;
non-finite numbers are written as null.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

from distill.errors import DistillError

__all__ = ["TeacherResult", "StudentResult", "RunResults", "read_finished_runs"]


@dataclass
class TeacherResult:
    accuracy: float
    params: int | None  # None for a black-box teacher
    source: str
    hidden: list[int]  # widths of the hidden dense layers
    architecture: str  # one line: the layer types in order, or "black box"
    latency_ms: dict[str, float] | None  # per batch, ms; None for a black-box teacher
    history: dict | None  # training history when trained in this run
    latency_us_per_sample: dict[str, float] | None = None  # µs per sample at each batch size


@dataclass
class StudentResult:
    accuracy: float
    params: int
    agreement: float  # argmax match with the teacher
    kl: float  # mean KL(teacher ‖ student) at τ = 1, nats
    family: str
    mode: str | list[str]
    phases: list[str]
    description: str
    accuracy_stages: dict[str, float]  # test accuracy after each phase
    layers: list[dict] | None  # mirror students: per replaced layer, params and fidelity
    latency_ms: dict[str, float]  # per batch, ms
    histories: dict[str, dict]
    latency_us_per_sample: dict[str, float] | None = None  # µs per sample at each batch size


@dataclass
class RunResults:
    name: str
    dataset: dict
    teacher: TeacherResult
    student: StudentResult
    compression_ratio: float | None  # teacher params / student params; None for a black-box teacher
    accuracy_drop_pts: float  # teacher − student accuracy, percentage points
    lossless: bool  # drop ≤ 1 pt (seed 004)
    wall_time_s: float  # seconds; a resumed run adds its earlier parts that stopped on SIGTERM / SIGINT
    devices: int  # devices the training steps ran on
    platform: str  # cpu, gpu or tpu
    resumed: bool = False  # whether the run was continued with --resume
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def read_finished_runs(folder) -> list[tuple]:
    """The finished `distill run` folders directly under `folder`, as (path, results.json dict,
    config.yaml dict) sorted by name — read as JSON and safe YAML, never executed. A finished run
    has both files, and its results give the student's family, accuracy and parameters and the
    teacher's accuracy and parameters. Raises DistillError for none, an unreadable file, or a run
    without those records."""
    folder = Path(folder)
    runs = sorted(p for p in folder.iterdir() if (p / "results.json").is_file() and (p / "config.yaml").is_file())
    if not runs:
        raise DistillError(f"{folder} holds no finished `distill run` folders (results.json and config.yaml)")
    out = []
    for run in runs:
        try:
            res = json.loads((run / "results.json").read_text())
            cfg = yaml.safe_load((run / "config.yaml").read_text())
        except (OSError, ValueError, yaml.YAMLError) as err:
            raise DistillError(f"{run}: unreadable results.json or config.yaml ({type(err).__name__})") from None
        st = res.get("student") if isinstance(res, dict) else None
        teacher = res.get("teacher") if isinstance(res, dict) else None
        if not isinstance(cfg, dict) or not isinstance(cfg.get("student"), dict) or not isinstance(st, dict) \
                or not isinstance(teacher, dict) or not {"family", "accuracy", "params"} <= st.keys() \
                or not {"accuracy", "params"} <= teacher.keys():
            raise DistillError(f"{run}: not a finished `distill run` folder (its results.json lacks the student's or "
                               "the teacher's accuracy and parameters, or its config.yaml the student section)")
        out.append((run, res, cfg))
    return out
