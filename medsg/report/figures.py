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
    """Reliability diagram on the max probability, same bins as the ECE in medsg.metrics."""
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
    ax.bar(
        edges[:-1][filled], acc[filled], width=1 / n_bins, align="edge", edgecolor="black", label="accuracy"
    )
    ax.bar(
        edges[:-1][filled],
        (mean_conf - acc)[filled],
        bottom=acc[filled],
        width=1 / n_bins,
        align="edge",
        color="tab:red",
        alpha=0.3,
        label="gap to confidence",
    )
    ax.plot([0, 1], [0, 1], "--", color="grey", linewidth=1)
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{plain(title)} ({n_bins} bins), ECE = {ece_score(y_true, probs, n_bins):.3f}")
    ax.legend(loc="upper left", fontsize=8)
    return _png(fig)


def training_curves_png(histories: dict[int, pd.DataFrame]) -> bytes:
    """Train/val loss and val balanced accuracy against epoch, one line per fold."""
    fig = Figure(figsize=(10, 4), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for fold, history in sorted(histories.items()):
        if "epoch" not in history:
            continue
        epoch = history["epoch"]
        line = None
        if "train_loss" in history:
            (line,) = loss_ax.plot(epoch, history["train_loss"], label=f"fold {fold} train")
        if "val_loss" in history and history["val_loss"].notna().any():
            color = line.get_color() if line is not None else None
            loss_ax.plot(epoch, history["val_loss"], "--", color=color, label=f"fold {fold} val")
        if "val_balanced_accuracy" in history and history["val_balanced_accuracy"].notna().any():
            acc_ax.plot(epoch, history["val_balanced_accuracy"], label=f"fold {fold}")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="Loss (solid train, dashed inner val)")
    acc_ax.set(xlabel="epoch", ylabel="balanced accuracy", title="Inner-validation balanced accuracy")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    return _png(fig)


def _png(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return buffer.getvalue()
