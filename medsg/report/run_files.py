"""Protocol lines from the run folder's audit.json, manifest.csv and splits.json (read defensively).

These files only enrich the protocol text: a report must still be written when one is absent or unreadable
(an old run, a hand-made folder), so every reader here returns None or 'unknown' instead of raising.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd

from medsg.core.errors import MedsgError
from medsg.core.io import read_json
from medsg.data.audit import describe_grouping
from medsg.data.splits import header_grouping

log = logging.getLogger(__name__)

UNKNOWN = "unknown"
MAX_IDS = 10  # dropped ids listed in the protocol; the rest are counted


def read_json_or_none(path: Path) -> dict[str, Any] | None:
    """The JSON object in ``path``, or None (logged) when it is absent, unreadable or not an object."""
    try:
        data = read_json(path, default=None)
    except MedsgError as exc:
        log.warning("report: ignoring unreadable %s (%s)", path, exc)
        return None
    return data if isinstance(data, dict) else None


def manifest_ids(path: Path) -> set[str] | None:
    """Ids of the run's manifest.csv (after the audit policy), or None when absent or unreadable."""
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, usecols=["id"])
    except (OSError, ValueError, pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        log.warning("report: ignoring unreadable %s (%s)", path, exc)
        return None
    return set(frame["id"])


def audit_thresholds(threshold: Any, min_corr: Any, audit: dict[str, Any] | None) -> tuple[Any, Any]:
    """(near-duplicate threshold, min correlation): config values win, audit.json's fill the gaps."""
    audit = audit or {}
    threshold = audit.get("near_dup_threshold", UNKNOWN) if threshold == UNKNOWN else threshold
    min_corr = audit.get("min_correlation") if min_corr == UNKNOWN else min_corr
    return threshold, min_corr


def audit_policy_text(conflicts: Any, threshold: Any, min_corr: Any, audit: dict[str, Any] | None) -> str:
    """'conflicts drop; near duplicates: dHash-256 distance <= 40 bits and thumbnail correlation >= 0.95'."""
    threshold, min_corr = audit_thresholds(threshold, min_corr, audit)
    text = f"conflicts {conflicts}; near duplicates: dHash-256 distance <= {threshold} bits"
    if min_corr is not None:
        text += f" and thumbnail correlation >= {min_corr}"
    near = [c for c in (audit or {}).get("near_conflicts") or [] if isinstance(c, dict)]
    if near:  # the policy drops exact conflicts only: near-duplicates under two labels stay, one group each
        shown = "; ".join(
            f"{', '.join(map(str, c.get('ids', [])))} ({', '.join(map(str, c.get('labels', [])))})"
            for c in near[:5]
        )
        text += (
            f". {len(near)} near-duplicate cluster(s) span two or more labels and are kept (each in one fold, "
            f"never dropped by the policy; check their labels): {shown}" + ("; ..." if len(near) > 5 else "")
        )
    return text


def _policy_ids(audit: dict[str, Any], conflicts: Any) -> set[str]:
    """Ids the policy drops by the audit alone: broken images, plus conflicts when they are dropped."""
    problems = audit.get("problems") or []
    ids = {
        str(p.get("id"))
        for p in problems
        if isinstance(p, dict) and p.get("role") == "image" and p.get("severity") == "error"
    }
    if conflicts == "drop":
        ids |= {str(i) for c in audit.get("conflicts") or [] if isinstance(c, dict) for i in c.get("ids", [])}
    return ids


def dropped_text(audit: dict[str, Any] | None, kept: set[str] | None, conflicts: Any) -> str:
    """How many images the audit policy removed, e.g. '2 of 780 (benign (433), malignant (145))'.

    With manifest.csv the count is audit images minus manifest rows (what really happened); without it, the
    ids the policy would drop by audit.json. Neither file: 'unknown'.
    """
    if audit is None or not isinstance(audit.get("n_images"), int):
        return UNKNOWN if kept is None else f"unknown (no audit.json; {len(kept)} images kept)"
    total = audit["n_images"]
    candidates = _policy_ids(audit, conflicts)
    if kept is not None:
        count = total - len(kept)
        ids = sorted(candidates - kept)
        source = "the audited images minus those the run kept"
    else:
        ids = sorted(candidates)
        count = len(ids)
        source = "the images the policy drops, from the audit record"
    shown = ", ".join(ids[:MAX_IDS]) + (f", ... ({len(ids) - MAX_IDS} more)" if len(ids) > MAX_IDS else "")
    return f"{count} of {total}" + (f" ({shown})" if shown and count else "") + f"; counted as {source}"


def grouping_description(
    header: dict[str, Any] | None,
    adapter: Any,
    grouping: Any,
    near_dup_threshold: Any = UNKNOWN,
    min_correlation: Any = UNKNOWN,
) -> str:
    """The split header's own description of its groups, else the runner's wording from the config (said so)."""
    described = header_grouping(header or {})[1]  # also the words older split files kept in "grouping"
    if described:
        return described
    if adapter == UNKNOWN:
        return UNKNOWN
    custom = grouping not in ("group", UNKNOWN)
    text = describe_grouping(
        str(adapter), str(grouping) if custom else "group", near_dup_threshold, min_correlation
    )
    source = "the grouping the config names" if custom else "how the runner groups this dataset"
    return f"{text} (from {source}; the split file does not describe its groups)"
