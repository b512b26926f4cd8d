"""Run-folder outputs: results.json, report.md, training-curve PNG. Every file is written atomically."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

from distill.io import write_atomic, write_json  # noqa: F401  (run folders write through these)

matplotlib.use("Agg")  # files only, never a window
import matplotlib.pyplot as plt  # noqa: E402


def markdown_table(header, rows) -> list[str]:
    """Lines of a Markdown table: header (columns) and rows (sequences of cell strings)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


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


def stage_rows(results: dict) -> list[tuple[str, str]]:
    """Test accuracy after each training phase (warm start, layer-wise, fine-tuned), if any."""
    return [(f"student accuracy after {k}", _pct(v)) for k, v in results["student"].get("accuracy_stages", {}).items()]


LAYER_COLUMNS = ("layer", "target", "params", "teacher params", "compression", "relative error", "R²",
                 "R² after layer-wise")


def layer_rows(results: dict) -> list[tuple[str, ...]]:
    """Per replaced hidden layer: fidelity on held-out (test) teacher activations, at the end of the
    run and (when there was a layer-wise phase) right after it, before any fine-tuning."""
    return [(r["layer"], r["target"], f"{r['params']:,}", f"{r['teacher_params']:,}", f"{r['compression_ratio']:.1f}×",
             f"{r['relative_error']:.4f}", f"{r['r2']:.4f}",
             f"{r['r2_after_layerwise']:.4f}" if "r2_after_layerwise" in r else "–")
            for r in results["student"].get("layers") or []]


def console_table(results: dict) -> str:
    rows = results_table(results) + stage_rows(results)
    width = max(len(k) for k, _ in rows)
    text = "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)
    layers = layer_rows(results)
    if layers:
        widths = [max(len(c), *(len(r[i]) for r in layers)) for i, c in enumerate(LAYER_COLUMNS)]
        fmt = "  " + "  ".join(f"{{:<{w}}}" for w in widths)
        text += "\n\n  per-layer fidelity on held-out teacher activations (test split)\n"
        text += "\n".join(fmt.format(*r) for r in [LAYER_COLUMNS, *layers])
    return text


def markdown_report(results: dict, config_yaml: str) -> str:
    d, s = results["dataset"], results["student"]
    lines = [
        f"# distill run: {results['name']}",
        "",
        f"Dataset **{d['name']}**, inputs {d['image_shape'][0]}×{d['image_shape'][1]} "
        f"({d['n_train']} train / {d['n_val']} validation / {d['n_test']} test). "
        f"Student: {s['description']}; mode `{s['mode']}`. Accuracies are on the test split; in every "
        "training phase the parameters kept are those of the best validation epoch.",
        "",
        "| metric | value |",
        "|---|---|",
        *(f"| {k} | {v} |" for k, v in results_table(results) + stage_rows(results)),
        "",
    ]
    layers = layer_rows(results)
    if layers:
        lines += [
            "## Per-layer fidelity",
            "",
            "Each student layer is fed the teacher's own input to that layer (test split) and compared "
            "with the teacher's output of it.",
            "",
            *markdown_table(LAYER_COLUMNS, layers),
            "",
            "![per-layer fidelity](per_layer_fidelity.png)",
            "",
        ]
    if s.get("histories") or results["teacher"].get("history"):
        lines += ["![training curves](training_curves.png)", ""]
    lines += [
        "## Resolved config",
        "",
        "```yaml",
        config_yaml.rstrip(),
        "```",
        "",
    ]
    return "\n".join(lines)


def _save(fig, path: Path) -> None:
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def plot_layer_fidelity(path: Path, layers: list[dict]) -> None:
    """Bars of R² and relative error per replaced layer (held-out teacher activations)."""
    names = [r["layer"] for r in layers]
    fig, (ax_r2, ax_err) = plt.subplots(1, 2, figsize=(9, 3.5))
    ax_r2.bar(names, [r["r2"] for r in layers], color="tab:blue")
    ax_r2.set(ylabel="R²", title="R² (1 = exact)", ylim=(min(0.0, *(r["r2"] for r in layers)), 1.0))
    ax_err.bar(names, [r["relative_error"] for r in layers], color="tab:orange")
    ax_err.set(ylabel="‖ŷ − y‖ / ‖y‖", title="relative error")
    for ax, key in ((ax_r2, "r2"), (ax_err, "relative_error")):
        ax.grid(alpha=0.3, axis="y")
        for i, r in enumerate(layers):
            ax.annotate(f"{r[key]:.3f}", (i, r[key]), ha="center", va="bottom", fontsize=8)
    fig.suptitle("per-layer fidelity to the teacher (test split)")
    fig.tight_layout()
    _save(fig, path)


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
    _save(fig, path)
