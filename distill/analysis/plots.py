"""The PNG figures of `distill analyze` (matplotlib's Figure API; never pyplot, never a global backend).

Each function takes the JSON-able records `distill.experiments.analyze` writes to analysis.json and
saves one PNG atomically (a temporary file renamed into place).
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from matplotlib.figure import Figure

__all__ = ["plot_bond_entropy", "plot_schmidt_spectra", "plot_truncation", "plot_teacher_entanglement",
           "plot_teacher_tt_ranks"]


def _save(fig: Figure, path: Path) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    os.replace(tmp, path)


def plot_bond_entropy(path: Path, bonds: list[dict], title: str) -> None:
    """Entanglement entropy (nats) and Schmidt rank per bond of the student, with ln χ and the
    largest entropy each bond can hold."""
    fig = Figure(figsize=(9, 4.2))
    ax, ax_r = fig.subplots(2, 1, sharex=True)
    t = [b["bond"] for b in bonds]
    ax.plot(t, [b["entropy"] for b in bonds], marker=".", label="entropy S (nats)")
    ax.plot(t, [b["max_entropy"] for b in bonds], color="tab:gray", linestyle="--",
            label="largest possible: ln min(χ, dims of either side)")
    ax.set(ylabel="S (nats)", title=title)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    ax_r.step(t, [b["chi"] for b in bonds], where="mid", label="Schmidt rank")
    ax_r.plot(t, [b["chi_stored"] for b in bonds], color="tab:gray", linestyle="--", label="stored χ")
    ax_r.set(xlabel="bond t (chain position; red line: the output core)", ylabel="rank")
    for b in bonds:
        if b["output_side"] == "left" and b["bond"] >= 1 and bonds[b["bond"] - 1]["output_side"] == "right":
            for a in (ax, ax_r):
                a.axvline(b["bond"] - 0.5, color="tab:red", alpha=0.4)
    ax_r.legend(fontsize=8)
    ax_r.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_schmidt_spectra(path: Path, bonds: list[dict], n_curves: int = 6) -> None:
    """Schmidt values s_i (Σ s² = 1, log scale) of a few evenly spaced bonds of the student."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    if bonds:
        step = max(1, math.ceil(len(bonds) / n_curves))
        chosen = bonds[::step]
        mid = min(bonds, key=lambda b: abs(b["bond"] - len(bonds) / 2))
        if mid not in chosen:
            chosen.append(mid)
        for b in sorted(chosen, key=lambda b: b["bond"]):
            s = [v for v in b["schmidt"] if v > 0]
            ax.semilogy(range(1, len(s) + 1), s, marker=".", label=f"bond {b['bond']} (S={b['entropy']:.2f})")
        ax.legend(fontsize=7)
    ax.set(xlabel="index i", ylabel="Schmidt value s_i", title="Schmidt spectra of the student")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    _save(fig, path)


def plot_truncation(path: Path, rows: list[dict], *, student_accuracy: float, target: float | None) -> None:
    """Test accuracy against the truncated bond dimension χ′, without and with the KD fine-tune."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    chi = [r["chi"] for r in rows]
    ax.plot(chi, [100 * r["accuracy"] for r in rows], marker="o", label="truncated (SVD, no training)")
    tuned = [(r["chi"], r["accuracy_finetuned"]) for r in rows if r.get("accuracy_finetuned") is not None]
    if tuned:
        ax.plot([c for c, _ in tuned], [100 * a for _, a in tuned], marker="s", label="truncated + short KD fine-tune")
    ax.axhline(100 * student_accuracy, color="tab:gray", linestyle="--", label="student as trained")
    if target is not None:
        ax.axhline(100 * target, color="tab:red", linestyle=":", label="target accuracy")
    ax.set(xlabel="bond dimension χ′ after truncation", ylabel="test accuracy (%)",
           title="post-training compression of the student")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def plot_teacher_entanglement(path: Path, layers: list[dict]) -> None:
    """Per teacher weight matrix: entanglement entropy across each TT cut, one line per neuron ordering."""
    fig = Figure(figsize=(4.2 * max(1, len(layers)), 3.8))
    axes = fig.subplots(1, max(1, len(layers)), squeeze=False)[0]
    for ax, layer in zip(axes, layers):
        for row in layer["orderings"]:
            cuts = [c["cut"] for c in row["cuts"]]
            ax.plot(cuts, [c["entropy"] for c in row["cuts"]], marker=".", label=row["in_ordering"])
        first = layer["orderings"][0]["cuts"] if layer["orderings"] else []
        if first:
            ax.plot([c["cut"] for c in first], [c["max_entropy"] for c in first], color="tab:gray", linestyle="--",
                    label="ln min(dims)")
        ax.set(xlabel="TT cut", ylabel="S (nats)", title=f"{layer['name']} {layer['shape'][0]}×{layer['shape'][1]}")
        ax.set_xticks([c["cut"] for c in first] if first else [])
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("teacher weights as TT-matrices: entanglement per cut by input-neuron ordering")
    fig.tight_layout()
    _save(fig, path)


def plot_teacher_tt_ranks(path: Path, rows: list[dict], *, teacher_accuracy: float, target: float | None) -> None:
    """Teacher test accuracy with its hidden dense layers replaced by rank-r TT-SVD approximations."""
    fig = Figure(figsize=(6.5, 4))
    ax = fig.subplots()
    for ordering in dict.fromkeys(r["ordering"] for r in rows):
        sel = [r for r in rows if r["ordering"] == ordering]
        ax.semilogx([r["rank"] for r in sel], [100 * r["accuracy"] for r in sel], marker=".", base=2, label=ordering)
    ax.axhline(100 * teacher_accuracy, color="tab:gray", linestyle="--", label="teacher")
    if target is not None:
        ax.axhline(100 * target, color="tab:red", linestyle=":", label="target accuracy")
    ax.set(xlabel="TT rank cap r (every cut)", ylabel="test accuracy (%)",
           title="teacher with TT-SVD hidden layers (first layer's input ordering)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    _save(fig, path)
