"""Results per subgroup (age decade, sex, body site...): does the model work as well for every kind of patient?

A pooled figure can hide a subgroup the model fails. Each subgroup of a manifest column gets its image and
group counts, balanced accuracy and the critical class's sensitivity (the headline rule's argmax, as in the
per-class table), with
95% CIs from the report's one cluster bootstrap (``medsg.metrics``), resampling the split's groups within the
subgroup. A subgroup with fewer images than ``eval.min_subgroup_size`` is flagged as too small to say anything
about: its point values are shown, its CIs are not computed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from medsg.core.errors import ConfigError
from medsg.metrics import bootstrap_ci, sensitivity_cis

DEFAULT_COLUMNS = ("age", "sex", "localization", "site")  # used when eval.subgroups is null and present
UNKNOWN = "unknown"
_MISSING = {"", "unknown", "nan", "na", "n/a", "none", "null"}


def age_decades(values: pd.Series) -> pd.Series:
    """Ages as text ('45.0') -> decade labels ('40-49'); empty, negative or non-numeric -> 'unknown'."""
    years = pd.to_numeric(values, errors="coerce")
    low = (years // 10 * 10).where(years >= 0)
    return low.map(lambda v: UNKNOWN if pd.isna(v) else f"{int(v)}-{int(v) + 9}")


def clean_labels(values: pd.Series) -> pd.Series:
    """Category labels stripped; empty and 'unknown'-like values (any case) become one 'unknown' label."""
    text = values.fillna("").astype(str).str.strip()
    return text.where(~text.str.lower().isin(_MISSING), UNKNOWN)


def subgroup_columns(manifest_columns: Sequence[str], requested: Sequence[str] | None) -> list[str]:
    """``eval.subgroups`` when given (each must be a manifest column), else those of DEFAULT_COLUMNS present."""
    have = list(manifest_columns)
    if requested is None:
        return [c for c in DEFAULT_COLUMNS if c in have]
    missing = [c for c in requested if c not in have]
    if missing:
        raise ConfigError(
            f"eval.subgroups names {missing}, which the run's manifest.csv lacks; its columns are {have}. "
            "Remove them from eval.subgroups or set it to null for the default columns."
        )
    return list(requested)


def subgroup_labels(manifest: pd.DataFrame, ids: Sequence[str], columns: Sequence[str]) -> pd.DataFrame:
    """One label column per subgroup column, row-aligned with ``ids``; images absent from the manifest are unknown."""
    rows = manifest.drop_duplicates("id").set_index("id").reindex(pd.Index(ids, dtype=str))
    return pd.DataFrame(
        {c: (age_decades if c == "age" else clean_labels)(rows[c]).to_numpy() for c in columns},
        index=range(len(ids)),
    )


def subgroup_rows(
    y_true: ArrayLike,
    probs: ArrayLike,
    class_names: Sequence[str],
    labels: pd.DataFrame,
    groups: ArrayLike | None = None,
    critical: str | None = None,
    min_size: int = 30,
    n_bootstrap: int = 1000,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """One dict per (column, value): counts, balanced accuracy and the critical class's sensitivity with CIs.

    ``labels`` comes from ``subgroup_labels`` (row-aligned with ``y_true``); ``groups`` holds one split group
    per row (None: images are independent). A subgroup under ``min_size`` images is ``too_small``: point values
    only, CIs None; likewise its sensitivity when it holds fewer than ``min_size`` critical-class cases
    (``critical_too_small``), whatever its number of images.
    """
    y, p = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    g = None if groups is None else np.asarray(groups)
    out = []
    for column in labels.columns:
        for value in _ordered(labels[column], by_age=column == "age"):
            rows = (labels[column] == value).to_numpy()
            ys, ps, gs = y[rows], p[rows], None if g is None else g[rows]
            small = int(rows.sum()) < min_size
            row: dict[str, Any] = {
                "column": column,
                "value": value,
                "n_images": int(rows.sum()),
                "n_groups": int(rows.sum() if gs is None else len(pd.unique(gs))),
                "too_small": small,
                "balanced_accuracy": _balanced_accuracy(ys, ps, class_names, gs, small, n_bootstrap, seed),
            }
            if critical is not None:  # a sensitivity rests on the subgroup's critical cases, not its images
                cases = int((ys == list(class_names).index(critical)).sum())
                row["critical_too_small"] = cases < min_size
                row["sensitivity"] = _sensitivity(
                    ys, ps, class_names, critical, gs, cases < min_size, n_bootstrap, seed
                )
            out.append(row)
    return out


def subgroup_summary(
    manifest: pd.DataFrame | None,
    ids: Sequence[str],
    y_true: ArrayLike,
    probs: ArrayLike,
    class_names: Sequence[str],
    requested: Sequence[str] | None = None,
    critical: str | None = None,
    min_size: int = 30,
    groups: ArrayLike | None = None,
    n_bootstrap: int = 1000,
    seed: int = 0,
    rule: str = "balanced",
) -> dict[str, Any]:
    """summary.json's "subgroups": the columns used, the rows of ``subgroup_rows`` and the section's sentence.

    ``manifest`` is the run's manifest.csv read as text (None: absent or unreadable); ``requested`` is
    ``eval.subgroups`` (None: the DEFAULT_COLUMNS the manifest has). ``probs`` are the headline rule's
    probabilities and ``rule`` its name (``eval.decision``), so subgroups are scored as the headline is.
    """
    if manifest is None or "id" not in manifest.columns:
        if requested:
            raise ConfigError(
                f"eval.subgroups names {list(requested)}, but the run folder has no readable manifest.csv "
                "with an id column to read them from; set eval.subgroups to null"
            )
        manifest = pd.DataFrame({"id": []})
    columns = subgroup_columns(manifest.columns, requested)
    rows = []
    if columns:
        labels = subgroup_labels(manifest, ids, columns)
        rows = subgroup_rows(
            y_true, probs, class_names, labels, groups, critical, min_size, n_bootstrap, seed
        )
    return {
        "columns": columns,
        "critical_class": critical,
        "min_subgroup_size": min_size,
        "rows": rows,
        "rule": rule,
        "text": subgroup_text(columns, critical, min_size, requested is not None, rule),
    }


def subgroup_text(
    columns: Sequence[str], critical: str | None, min_size: int, requested: bool, rule: str = "balanced"
) -> str:
    """The sentence above the subgroup table (or saying why there is none)."""
    if not columns:
        if requested:
            return "eval.subgroups is empty, so no subgroup table is made."
        return (
            f"The run's manifest.csv has none of the columns {', '.join(DEFAULT_COLUMNS)}, so no subgroup table "
            "is made; name other manifest columns in eval.subgroups to get one."
        )
    sens = f" and the sensitivity of {critical} (over the subgroup's {critical} images)" if critical else ""
    return (
        f"Subgroups of {', '.join(columns)} (ages in decades; empty or unknown values form an 'unknown' row): "
        f"balanced accuracy{sens} of the headline decision rule's argmax ({rule}, as in the per-class table) "
        "on the pooled out-of-fold predictions, with 95% CIs from the same bootstrap "
        f"as the fold table, resampling the split's groups within each subgroup. Subgroups with fewer than "
        f"{min_size} images (eval.min_subgroup_size) are flagged too small to say anything about: their "
        "point values are shown without a CI."
        + (
            f" Likewise a sensitivity resting on fewer than {min_size} {critical} cases is shown without a CI "
            "and flagged, however many images the subgroup has."
            if critical
            else ""
        )
    )


def _ordered(values: pd.Series, by_age: bool) -> list[str]:
    """Distinct labels: ages by decade, others alphabetically; 'unknown' last."""
    known = [v for v in pd.unique(values) if v != UNKNOWN]
    known.sort(key=(lambda v: int(v.split("-")[0])) if by_age else str)
    return known + ([UNKNOWN] if (values == UNKNOWN).any() else [])


def _balanced_accuracy(
    y: np.ndarray,
    p: np.ndarray,
    class_names: Sequence[str],
    groups: np.ndarray | None,
    small: bool,
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    ci = bootstrap_ci(y, p, class_names, n_resamples=n_bootstrap, seed=seed, groups=groups)[
        "balanced_accuracy"
    ]
    return {"point": ci["point"]} | (
        {"low": None, "high": None} if small else {"low": ci["low"], "high": ci["high"]}
    )


def _sensitivity(
    y: np.ndarray,
    p: np.ndarray,
    class_names: Sequence[str],
    critical: str,
    groups: np.ndarray | None,
    small: bool,
    n_bootstrap: int,
    seed: int,
) -> dict[str, Any]:
    ci = sensitivity_cis(y, p, class_names, n_bootstrap, seed, groups=groups)[critical]
    keep = ("point", "support") if small else ("point", "low", "high", "support")
    return {"low": None, "high": None} | {k: ci[k] for k in keep}
