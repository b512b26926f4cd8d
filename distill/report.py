"""Run-folder outputs: results.json, report.md, training-curve PNG. Every file is written atomically."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402


def write_atomic(path: Path, text: str) -> None:
    """Write `text` to `path` through a temporary file and a rename: never a half-written file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj: dict) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f} %"


def results_table(results: dict) -> list[tuple[str, str]]:
    """(metric, value) rows shared by the console table and report.md."""
    t, s = results["teacher"], results["student"]
    return [
        ("teacher accuracy (test)", _pct(t["accuracy"])),
        ("student accuracy (test)", _pct(s["accuracy"])),
        ("accuracy drop", f"{results['accuracy_drop_pts']:+.2f} pts"),
        ("agreement with teacher", _pct(s["agreement"])),
        ("KL(teacher ‖ student)", f"{s['kl']:.4f} nats"),
        ("teacher parameters", f"{t['params']:,}"),
        ("student parameters", f"{s['params']:,}"),
        ("compression ratio", f"{results['compression_ratio']:.2f}×"),
        ("lossless (drop ≤ 1 pt)", "yes" if results["lossless"] else "no"),
        ("teacher latency, batch 1 / 256", f"{t['latency_ms']['1']:.3f} / {t['latency_ms']['256']:.3f} ms"),
        ("student latency, batch 1 / 256", f"{s['latency_ms']['1']:.3f} / {s['latency_ms']['256']:.3f} ms"),
        ("wall time", f"{results['wall_time_s']:.1f} s"),
    ]


def console_table(results: dict) -> str:
    rows = results_table(results)
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def markdown_report(results: dict, config_yaml: str) -> str:
    d, s = results["dataset"], results["student"]
    lines = [
        f"# distill run: {results['name']}",
        "",
        f"Dataset **{d['name']}**, inputs {d['image_shape'][0]}×{d['image_shape'][1]} "
        f"({d['n_train']} train / {d['n_val']} validation / {d['n_test']} test). "
        f"Student: {s['description']}. Accuracies are on the test split; the student's "
        f"parameters are those of its best validation epoch ({s['best_epoch'] + 1}).",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in results_table(results)),
        "",
        "![training curves](training_curves.png)",
        "",
        "## Resolved config",
        "",
        "```yaml",
        config_yaml.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def plot_curves(path: Path, histories: dict[str, dict]) -> None:
    """Training loss and validation accuracy per epoch, one line per model ({name: History.as_dict()})."""
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.8))
    for name, h in histories.items():
        epochs = range(1, len(h["train_loss"]) + 1)
        ax_loss.plot(epochs, h["train_loss"], marker=".", label=name)
        ax_acc.plot(epochs, [100 * a for a in h["val_accuracy"]], marker=".", label=name)
        ax_acc.plot([h["best_epoch"] + 1], [100 * h["best_val_accuracy"]], "k*", markersize=9)
    ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title="training loss")
    ax_acc.set(xlabel="epoch", ylabel="validation accuracy (%)", title="validation accuracy (★ kept)")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
