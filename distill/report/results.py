"""The result of one run, as one typed record written to results.json.

Keys are stable (tests/test_results_schema.py keeps them): tools that read results.json of
earlier runs keep working. All accuracies are fractions in [0, 1] on the test split; latencies
are milliseconds per batch (`latency_ms[str(batch)]`) and microseconds per sample
(`latency_us_per_sample[str(batch)]`), from the median of 20 jitted calls after compilation;
non-finite numbers are written as null.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

__all__ = ["TeacherResult", "StudentResult", "RunResults"]


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
    wall_time_s: float
    devices: int  # devices the training steps ran on
    platform: str  # cpu, gpu or tpu
    resumed: bool = False  # whether the run was continued with --resume
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)
