"""The report's Explanations section: the localisation table of ``<run_dir>/explain/`` and a few panels.

Everything is read from the files ``medsg.explain`` wrote (``explain.json``, ``localization_summary.csv``,
the fold panels), so the report never recomputes an explanation and a run without them simply has no section.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pandas as pd

from medsg.core.io import atomic_write_bytes, atomic_write_text, read_json
from medsg.report.tables import fmt

__all__ = ["MAX_PANELS", "load_explanations", "localization_table", "copy_explanations"]

MAX_PANELS = 4
METRIC_TITLES = {
    "pointing": "Pointing game ↑",
    "energy": "Energy in mask ↑",
    "iou": "Otsu IoU ↑",
    "deletion_auc": "Deletion AUC ↓",
}


def load_explanations(run_dir: Path) -> dict[str, Any] | None:
    """``explain.json`` plus the summary rows of a run's pooled explanations, or None when there are none."""
    folder = Path(run_dir) / "explain"
    record_path, table_path = folder / "explain.json", folder / "localization_summary.csv"
    if not record_path.is_file():
        return None
    record = read_json(record_path, advice="run `medsg explain` again")
    record["table"] = pd.read_csv(table_path) if table_path.is_file() else None
    record["folder"] = folder
    return record


def localization_table(record: dict[str, Any]) -> pd.DataFrame | None:
    """Display rows: one per map type, each score as 'mean [low, high]'."""
    table = record.get("table")
    if table is None or table.empty:
        return None
    rows = []
    for r in table.to_dict("records"):
        row = {
            "Map": r.get("map", r["map_type"]),
            "Kind": r.get("kind", ""),
            "Images (groups)": f"{r['n_cases']} ({r['n_groups']})",
        }
        for metric, title in METRIC_TITLES.items():
            if metric in r:
                row[title] = f"{fmt(r[metric])} [{fmt(r[f'{metric}_low'])}, {fmt(r[f'{metric}_high'])}]"
        rows.append(row)
    return pd.DataFrame(rows)


def copy_explanations(record: dict[str, Any], report_dir: Path) -> list[tuple[str, str]]:
    """Copy the localisation CSVs and up to ``MAX_PANELS`` panels into ``report_dir``; returns the panels as
    (caption, path relative to the report)."""
    folder: Path = record["folder"]
    for name in ("localization.csv", "localization_summary.csv"):
        if (folder / name).is_file():
            atomic_write_text(report_dir / name, (folder / name).read_text(encoding="utf-8"))
    panels = []
    for k, rel in enumerate(record.get("review_panels", [])[:MAX_PANELS]):
        source = (folder / rel).resolve()
        target = report_dir / "figures" / f"explanation_{k + 1}.png"
        atomic_write_bytes(target, _compact_png(source))
        panels.append(
            (f"Explanation panel {k + 1} ({source.stem.rsplit('-', 1)[0]})", f"figures/{target.name}")
        )
    return panels


def explanation_text(record: dict[str, Any]) -> list[str]:
    """The section's paragraphs: what was scored, what was left out, how the CIs were made, the definitions."""
    scored, no_lesion = record.get("n_scored", 0), record.get("n_without_lesion", 0)
    no_files = record.get("n_without_mask_files", 0)
    review = (
        "For clinical review, open explain/review.html in the run folder in a browser (medsg explain RUN_DIR "
        "remakes it): filters, map toggle, opacity, and ratings saved to a CSV on your machine."
    )
    if scored == 0:  # no lesion masks (ISIC): nothing was scored, so no score is defined or shown
        return [
            "No localisation scores: none of the test images has a lesion mask "
            f"({no_files} without mask files, {no_lesion} with an empty mask), so the maps cannot be checked "
            "against the lesion. The panels below show significance maps and Grad-CAM for review only.",
            review,
        ]
    lines = [
        f"{scored} test images with a lesion mask were scored, each with the model of its own outer fold "
        f"(out-of-fold). {no_lesion} images whose mask is empty (no lesion, e.g. normal) and {no_files} without "
        "mask files were left out of the scores. Maps are compared on the original image's geometry.",
        f"CIs: {record.get('ci', 'percentile bootstrap over the split groups')}. Scoring took "
        f"{record.get('seconds', 0):.0f} s.",
        "The centred Gaussian is the bar to clear: lesions tend to sit near the image centre, so a map that does "
        "not beat it has not shown that it found the lesion rather than the middle.",
        "Fused significance: each stage's significance map is upsampled to the input, min-max scaled per image, "
        "and the stages are averaged with equal weight. Token allocation (on the panels) is derived from the "
        "significance ranking, so it is not scored: it adds no independent evidence.",
    ]
    lines += [f"{k}: {v}." for k, v in record.get("definitions", {}).items()]
    lines.append(review)
    return lines


def _compact_png(path: Path) -> bytes:
    """A panel re-encoded with a 256-colour palette: a third of the size, so committed reports stay small
    (the run folder keeps the full-colour panel)."""
    from PIL import Image

    with Image.open(path) as im:
        palette = im.convert("RGB").quantize(256, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    palette.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()
