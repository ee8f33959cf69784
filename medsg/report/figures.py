"""Report figures as PNG bytes (matplotlib Agg via Figure objects, so no global pyplot state)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from sklearn.metrics import roc_curve

from medsg.metrics import N_BINS, confidence_bins, ece_score


def plain(text: object) -> str:
    """Text for matplotlib: '$' would otherwise start mathtext and can crash on odd class names."""
    return str(text).replace("$", r"\$")


def confusion_png(
    cm: Sequence[Sequence[int]],
    class_names: Sequence[str],
    title: str = "Pooled out-of-fold confusion matrix",
) -> bytes:
    """Confusion matrix normalised by true class (colour, row %) annotated with counts."""
    counts = np.asarray(cm, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    norm = np.divide(counts, rows, out=np.zeros_like(counts), where=rows > 0)
    size = 2.5 + 0.6 * len(class_names)
    fig = Figure(figsize=(size + 1, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, label="fraction of true class")
    for i in range(len(counts)):
        for j in range(len(counts)):
            color = "white" if norm[i, j] > 0.5 else "black"
            ax.text(
                j,
                i,
                f"{int(counts[i, j])}\n{norm[i, j]:.0%}",
                ha="center",
                va="center",
                color=color,
                fontsize=8,
            )
    ticks = range(len(class_names))
    ax.set_xticks(ticks, [plain(c) for c in class_names], rotation=45, ha="right")
    ax.set_yticks(ticks, [plain(c) for c in class_names])
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(plain(title))
    return _png(fig)


def roc_png(
    y_true: np.ndarray,
    probs: np.ndarray,
    class_names: Sequence[str],
    aurocs: Sequence[float | None],
    title: str = "ROC, one-vs-rest, pooled out-of-fold",
) -> bytes:
    """One-vs-rest ROC curve per class on pooled predictions (classes absent from y_true are skipped)."""
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.add_subplot()
    for c, name in enumerate(class_names):
        positives = y_true == c
        if positives.all() or not positives.any():
            continue
        fpr, tpr, _ = roc_curve(positives.astype(int), probs[:, c])
        auc = aurocs[c]
        ax.plot(fpr, tpr, label=f"{plain(name)} (AUROC {auc:.3f})" if auc is not None else plain(name))
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax.set_xlabel("1 - specificity")
    ax.set_ylabel("sensitivity")
    ax.set_title(plain(title))
    ax.legend(loc="lower right", fontsize=8)
    return _png(fig)


def reliability_png(
    y_true: np.ndarray, probs: np.ndarray, n_bins: int = N_BINS, title: str = "Reliability"
) -> bytes:
    """``reliability_figure`` as PNG bytes."""
    return _png(reliability_figure(y_true, probs, n_bins, title))


def reliability_figure(
    y_true: np.ndarray, probs: np.ndarray, n_bins: int = N_BINS, title: str = "Reliability"
) -> Figure:
    """Reliability diagram on the max probability, same bins as the ECE in medsg.metrics.

    Each filled bin shows its accuracy (bar), its mean confidence (marker) and its image count above it, so
    a reader sees which bins rest on a handful of images. The gap is a hatched outline with no fill, so the
    legend shows exactly what is drawn (a translucent fill over the bar looked like a third colour).
    """
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == y_true).astype(np.float64)
    bins = confidence_bins(conf, n_bins)
    count = np.bincount(bins, minlength=n_bins)
    acc = np.divide(np.bincount(bins, correct, n_bins), count, out=np.zeros(n_bins), where=count > 0)
    mean_conf = np.divide(np.bincount(bins, conf, n_bins), count, out=np.zeros(n_bins), where=count > 0)
    edges = np.linspace(0, 1, n_bins + 1)
    fig = Figure(figsize=(5.5, 5), layout="constrained")
    ax = fig.add_subplot()
    filled = count > 0
    left, width = edges[:-1][filled], 1 / n_bins
    ax.bar(
        left, acc[filled], width=width, align="edge", color="tab:blue", edgecolor="black", label="accuracy"
    )
    low, high = np.minimum(acc, mean_conf)[filled], np.maximum(acc, mean_conf)[filled]
    ax.bar(
        left,
        high - low,
        bottom=low,
        width=width,
        align="edge",
        fill=False,
        hatch="//",
        edgecolor="tab:red",
        label="gap to mean confidence",
    )
    centres = left + width / 2
    ax.plot(centres, mean_conf[filled], "o", color="tab:red", markersize=3, label="mean confidence")
    for x, top, n in zip(centres, high, count[filled], strict=True):
        ax.text(x, min(top + 0.02, 0.97), str(int(n)), ha="center", va="bottom", fontsize=6)
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1, label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max probability); numbers: images per bin")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{plain(title)} ({n_bins} bins), ECE = {ece_score(y_true, probs, n_bins):.3f}")
    ax.legend(loc="upper left", fontsize=8)
    return fig


def training_curves_png(histories: dict[int, pd.DataFrame], selected: dict[int, int] | None = None) -> bytes:
    """``training_curves_figure`` as PNG bytes."""
    return _png(training_curves_figure(histories, selected))


def training_curves_figure(
    histories: dict[int, pd.DataFrame], selected: dict[int, int] | None = None
) -> Figure:
    """Train/val loss and val balanced accuracy against epoch, one line per fold.

    ``selected`` (fold -> epoch kept by selection) is marked with a star on both panels, so a reader sees
    which epoch's weights were tested. The legend sits below the panels, off the curves.
    """
    selected = selected or {}
    fig = Figure(figsize=(10, 4.8), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for fold, history in sorted(histories.items()):
        if "epoch" not in history:
            continue
        epoch = history["epoch"]
        line = None
        if "train_loss" in history:
            (line,) = loss_ax.plot(epoch, history["train_loss"], label=f"fold {fold} train")
        color = line.get_color() if line is not None else None
        if "val_loss" in history and history["val_loss"].notna().any():
            loss_ax.plot(epoch, history["val_loss"], "--", color=color, label=f"fold {fold} val")
        if "val_balanced_accuracy" in history and history["val_balanced_accuracy"].notna().any():
            (acc_line,) = acc_ax.plot(epoch, history["val_balanced_accuracy"], color=color)
            color = acc_line.get_color()
        _mark_selected(loss_ax, acc_ax, history, selected.get(fold), color)
    if selected:
        acc_ax.plot([], [], "*", color="black", markersize=10, linestyle="none", label="selected epoch")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss (solid train, dashed inner val)")
    acc_ax.set(xlabel="epoch", ylabel="balanced accuracy", title="Inner-validation balanced accuracy")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    handles, labels = [], []
    for ax in (loss_ax, acc_ax):
        h, lab = ax.get_legend_handles_labels()
        handles += h
        labels += lab
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 6), fontsize=7)
    return fig


def _mark_selected(
    loss_ax: object, acc_ax: object, history: pd.DataFrame, epoch: int | None, color: object
) -> None:
    """A star at the selected epoch on the val loss and val balanced accuracy curves (when that epoch is there)."""
    if epoch is None:
        return
    row = history[history["epoch"] == epoch]
    if row.empty:
        return
    for ax, column in ((loss_ax, "val_loss"), (acc_ax, "val_balanced_accuracy")):
        if column in row and row[column].notna().all():
            ax.plot(
                [epoch], row[column].to_numpy()[:1], "*", color=color, markersize=12, markeredgecolor="black"
            )


def to_png(fig: Figure) -> bytes:
    """A figure as PNG bytes (110 dpi, as every report figure)."""
    return _png(fig)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
