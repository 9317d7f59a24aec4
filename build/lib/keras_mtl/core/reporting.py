"""Human-facing output of a run: the training-curve plot and the closing results table."""

from __future__ import annotations

from pathlib import Path

from keras_mtl.core import fileio


def plot_history(rows: list[dict], tasks, path: Path) -> None:
    """Loss per task (train and held-out) and each task's Keras metric, per epoch; with task balancing,
    a third panel: the task weights (``weight_<task>``) and the pairwise gradient cosines (``cos_<a>_<b>``)."""
    plt = pyplot()
    if not rows:
        return
    epochs = [r["epoch"] for r in rows]
    balance = [k for k in rows[0] if k.startswith("cos_")]
    if balance:
        balance = [k for k in rows[0] if k.startswith("weight_")] + balance
    fig, axes = plt.subplots(1, 3 if balance else 2, figsize=(16 if balance else 11, 4))
    for task in tasks:
        for key, style in ((f"{task.name}_loss", "-"), (f"val_{task.name}_loss", "--")):
            if key in rows[0]:
                axes[0].plot(epochs, [r.get(key) for r in rows], style, label=key)
        for key in rows[0]:
            if key.startswith((f"{task.name}_", f"val_{task.name}_")) and not key.endswith("_loss"):
                axes[1].plot(epochs, [r.get(key) for r in rows], "--" if key.startswith("val_") else "-", label=key)
    for key in balance:
        axes[2].plot(epochs, [r.get(key) for r in rows], ":" if key.startswith("cos_") else "-", label=key)
    if balance:
        axes[2].axhline(0.0, color="grey", linewidth=0.5)
        axes[2].set_title("task weights, gradient cosines on the shared layers")
    axes[0].set_title("loss")
    axes[1].set_title("metrics (val_ = held-out split)")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, path)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: Path) -> None:
    """Lay out, write as PNG atomically, close."""
    fig.tight_layout()
    with fileio.atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    pyplot().close(fig)


def results_table(metrics: dict) -> str:
    rows = [("task", "split", "metric", "value", "params", "MACs / 1 s")]
    for name, result in metrics["tasks"].items():
        m = result["metrics"]
        value = result["headline"]["value"]
        rows.append(
            (
                name,
                result["split"],
                result["headline"]["name"],
                "n/a" if value is None else f"{value:.4f}",
                human(result["params"]),
                human(result["macs_per_second"]),
            )
        )
        for extra in ("macro_accuracy", "segment_f1_macro", "psds1"):
            if m.get(extra) is not None:
                rows.append(("", "", extra, f"{m[extra]:.4f}", "", ""))
    total = metrics["model"]
    rows.append(("model", "", "", "", human(total["params"]), human(total["macs_per_second"])))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    for name, result in metrics["tasks"].items():
        m = result["metrics"]
        if m.get("classes_never_detected"):
            lines.append(
                f"{name}: never detected (F1 0 in the macro averages): {', '.join(m['classes_never_detected'])}"
            )
        if m.get("classes_without_reference"):
            lines.append(
                f"{name}: no reference events (left out of the macro averages): "
                f"{', '.join(m['classes_without_reference'])}"
            )
        if m.get("psds1_note"):
            lines.append(f"{name}: {m['psds1_note']}")
    return "\n".join(lines)


def human(n: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.1f}{unit}"
    return f"{n:.0f}"
