"""Model selection: which epoch's weights a fold keeps (its sentence is ``Config.selection_rule``)."""

from __future__ import annotations

TIE = 1e-12  # balanced accuracies closer than this are a tie


def is_better(row: dict[str, float], best: dict[str, float], selection: str) -> bool:
    """Selection rule: higher val balanced accuracy, ties broken by lower val loss; always for last_epoch."""
    if selection == "last_epoch":
        return True
    acc, loss = row["val_balanced_accuracy"], row["val_loss"]
    best_acc, best_loss = best["val_balanced_accuracy"], best["val_loss"]
    return acc > best_acc + TIE or (abs(acc - best_acc) <= TIE and loss < best_loss)
