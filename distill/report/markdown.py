"""report.md, the console table and the run's PNG plots (matplotlib's Figure API, no global backend)."""

from __future__ import annotations

import os
from pathlib import Path

from matplotlib.figure import Figure


def markdown_table(header, rows) -> list[str]:
    """Lines of a Markdown table: header (columns) and rows (sequences of cell strings)."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
            *("| " + " | ".join(r) + " |" for r in rows)]


def _pct(x: float | None) -> str:
    return "–" if x is None else f"{100 * x:.2f} %"


def _latency(lat: dict | None) -> str:
    if not lat:
        return "– (black box)"
    return f"{lat['1']:.3f} / {lat['256']:.3f} ms per batch ({1e3 * lat['256'] / 256:.2f} µs per sample at 256)"


def results_table(results: dict) -> list[tuple[str, str]]:
    """(metric, value) rows shared by the console table and report.md."""
    t, s = results["teacher"], results["student"]
    ratio = results["compression_ratio"]
    return [
        ("teacher accuracy (test)", _pct(t["accuracy"])),
        ("student accuracy (test)", _pct(s["accuracy"])),
        ("accuracy drop", f"{results['accuracy_drop_pts']:+.2f} pts"),
        ("agreement with teacher", _pct(s["agreement"])),
        ("KL(teacher ‖ student)", f"{s['kl']:.4f} nats"),
        ("teacher parameters", "– (black box)" if t["params"] is None else f"{t['params']:,}"),
        ("student parameters", f"{s['params']:,}"),
        ("compression ratio", "–" if ratio is None else f"{ratio:.2f}×"),
        ("lossless (drop ≤ 1 pt)", "yes" if results["lossless"] else "no"),
        ("teacher latency, batch 1 / 256", _latency(t["latency_ms"])),
        ("student latency, batch 1 / 256", _latency(s["latency_ms"])),
        ("student / teacher latency", _latency_ratio(t["latency_ms"], s["latency_ms"])),
        ("wall time", f"{results['wall_time_s']:.1f} s"
                      + (" (resumed: with the earlier parts)" if results.get("resumed") else "")),
    ]


def _latency_ratio(teacher: dict | None, student: dict | None) -> str:
    """Student over teacher median latency per batch size, and what it says (timed one after the
    other in the run, 20 calls each: for a careful comparison use scripts/bench_inference.py)."""
    if not teacher or not student:
        return "–"

    def word(r: float) -> str:
        return "as fast" if f"{r:.2f}" == "1.00" else ("faster" if r < 1 else "slower")

    ratios = {b: student[b] / teacher[b] for b in ("1", "256")}
    return " / ".join(f"{r:.2f}× ({word(r)})" for r in ratios.values()) + " at batch 1 / 256"


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


def _save(fig: Figure, path: Path) -> None:
    from distill.train.sharding import is_primary

    if not is_primary():  # a multi-process run: process 0 writes the files
        return
    tmp = Path(path).with_name(f".{Path(path).name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def plot_layer_fidelity(path: Path, layers: list[dict]) -> None:
    """Bars of R² and relative error per replaced layer on held-out teacher activations, at the
    end of the run (and right after the layer-wise phase when there was one)."""
    names = [r["layer"] for r in layers]
    after = all("r2_after_layerwise" in r for r in layers)
    fig = Figure(figsize=(9, 3.5))
    ax_r2, ax_err = fig.subplots(1, 2)
    x = range(len(names))
    width = 0.4 if after else 0.8
    for ax, key, title in ((ax_r2, "r2", "R² (1 = exact)"), (ax_err, "relative_error", "relative error ‖ŷ − y‖ / ‖y‖")):
        if after:
            ax.bar([i - width / 2 for i in x], [r[f"{key}_after_layerwise"] for r in layers], width,
                   label="after layer-wise", color="tab:gray")
        ax.bar([i + (width / 2 if after else 0) for i in x], [r[key] for r in layers], width,
               label="end of run", color="tab:blue" if key == "r2" else "tab:orange")
        ax.set_xticks(list(x), names)
        ax.set(title=title)
        ax.grid(alpha=0.3, axis="y")
        for i, r in enumerate(layers):
            ax.annotate(f"{r[key]:.3f}", (i + (width / 2 if after else 0), r[key]), ha="center", va="bottom",
                        fontsize=8)
        if after:
            ax.legend(fontsize=8)
    fig.suptitle("per-layer fidelity to the teacher (test split; each layer fed the teacher's own input)")
    fig.tight_layout()
    _save(fig, path)


def plot_curves(path: Path, histories: dict[str, dict]) -> None:
    """One row per training run ({name: History.as_dict()}): its training loss (own axis: the
    teacher's cross-entropy, a layer's MSE and a student's τ²-scaled KD loss are not comparable)
    and its validation score per epoch (epochs counted from 1; ★ the epoch kept)."""
    rows = list(histories.items())
    fig = Figure(figsize=(10, 2.6 * len(rows) + 0.6))
    axes = fig.subplots(len(rows), 2, squeeze=False)
    for (name, h), (ax_loss, ax_val) in zip(rows, axes):
        epochs = list(range(1, len(h["train_loss"]) + 1))
        ax_loss.plot(epochs, h["train_loss"], marker=".")
        ax_loss.set(xlabel="epoch", ylabel="training loss", yscale="log", title=f"{name}: training loss")
        score = h.get("score_name", "accuracy")
        scale = 100.0 if score == "accuracy" else 1.0
        vals = [(e, scale * v) for e, v in zip(epochs, h["val_accuracy"]) if v is not None]
        if vals:
            ax_val.plot([e for e, _ in vals], [v for _, v in vals], marker=".")
        best = h.get("best_epoch", 0)
        if best and h.get("best_val_accuracy") is not None:
            ax_val.plot([best], [scale * h["best_val_accuracy"]], "k*", markersize=9)
        label = "validation accuracy (%)" if score == "accuracy" else f"validation {score}"
        ax_val.set(xlabel="epoch", ylabel=label, title=f"{name}: {label} (★ kept)" if vals else
                   f"{name}: no validation set (last epoch kept)")
        for ax in (ax_loss, ax_val):
            ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
