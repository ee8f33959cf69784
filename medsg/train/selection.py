"""Model selection: which epoch's weights a fold keeps, and the sentence that says so in metrics and reports."""

from __future__ import annotations

from medsg.config import Config
from medsg.protocol import selection_rule_text

TIE = 1e-12  # balanced accuracies closer than this are a tie


def is_better(row: dict[str, float], best: dict[str, float], selection: str) -> bool:
    """Selection rule: higher val balanced accuracy, ties broken by lower val loss; always for last_epoch."""
    if selection == "last_epoch":
        return True
    acc, loss = row["val_balanced_accuracy"], row["val_loss"]
    best_acc, best_loss = best["val_balanced_accuracy"], best["val_loss"]
    return acc > best_acc + TIE or (abs(acc - best_acc) <= TIE and loss < best_loss)


def selection_description(cfg: Config) -> str:
    """The selection rule in words, stored in every fold's metrics.json and quoted by the report."""
    return selection_rule_text(
        cfg.train.selection, cfg.train.epochs, cfg.train.ema, cfg.splits.inner_val_fraction
    )
