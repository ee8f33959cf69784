"""Protocol wording shared by training and reports: one home for each sentence, so they cannot drift apart.

Plain values in, text out: ``medsg.train`` (metrics.json) and ``medsg.report`` (a run folder's config.yaml)
both import this module, and it imports neither.
"""

from __future__ import annotations

from typing import Any


def selection_rule_text(selection: Any, epochs: Any, ema: Any, inner_val_fraction: Any) -> str:
    """Which epoch's weights a fold keeps, in words (stored in metrics.json and quoted by the report)."""
    if selection == "last_epoch":
        return f"fixed schedule: weights after the last epoch ({epochs})" + (" (EMA)" if ema else "")
    if selection != "inner_val":
        return f"{selection} (rule not documented)"
    frac = (
        f"{inner_val_fraction:.0%}" if isinstance(inner_val_fraction, (int, float)) else "an unknown fraction"
    )
    return (
        f"best inner-validation balanced accuracy (tie-break: lower val loss) on a grouped, stratified "
        f"{frac} split of the training folds" + (", EMA weights" if ema else "")
    )


OUTER_TEST_UNUSED = "the outer test fold is never used for selection"
