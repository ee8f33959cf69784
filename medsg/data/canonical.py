"""Builders of the committed canonical split files in ``data_splits/`` (see data_splits/README.md).

* BUSI: all 780 images, audited, groups = duplicate clusters (policy ``conflicts="keep"`` so every id of the
  official release is in the file; a runner that drops conflicts passes them as ``excluded_ids`` to
  ``load_or_create_splits``; the conflicting pair shares a group, hence a fold, so dropping it is clean).
* ISIC 2018 Task 3: all 10015 training ids from ``HAM10000_metadata.csv`` alone, grouped by ``lesion_id``,
  stratified by ``dx`` mapped to the Task 3 classes; optional extra id clusters (e.g. near duplicates an audit
  found) are merged into the lesion groups.

Each header's ``grouping`` is the manifest column the folds are grouped by (``"group"``), and
``grouping_description`` says what a group is in the words the runner uses (``medsg.data.audit.describe_grouping``).

``python -m medsg.data.canonical busi ROOT`` / ``... isic2018 METADATA_CSV [--audit-root ROOT]``.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable, Sequence
from pathlib import Path

from medsg.data.audit import (
    MIN_CORRELATION,
    NEAR_DUP_THRESHOLD,
    apply_audit_policy,
    audit_manifest,
    describe_grouping,
    merged_groups,
)
from medsg.data.busi import load_busi
from medsg.data.isic2018 import load_isic2018, metadata_manifest
from medsg.data.splits import (
    Folds,
    check_no_leakage,
    make_header,
    make_kfold_splits,
    save_splits,
    split_filename,
)

SPLITS_DIR = Path(__file__).resolve().parents[2] / "data_splits"


def busi_canonical(root: str | Path, k: int = 5, seed: int = 0) -> tuple[dict, Folds]:
    """(header, folds) for BUSI over every image, duplicate clusters grouped."""
    manifest = load_busi(root)
    report = audit_manifest(manifest)
    clean = apply_audit_policy(manifest, report, conflicts="keep")
    folds = make_kfold_splits(clean, k, seed)
    check_no_leakage(clean, folds)
    words = describe_grouping("busi", "group", report.near_dup_threshold, report.min_correlation)
    header = make_header(clean, "busi", k, seed, "group", report.manifest_hash, grouping_description=words)
    header["audit_conflicts"] = "keep"  # the conflicting pair stays in the file; see data_splits/README.md
    return header, folds


def isic_canonical(
    metadata_csv: str | Path,
    k: int = 5,
    seed: int = 0,
    extra_clusters: Iterable[Sequence[str]] = (),
    near_dup_threshold: int = NEAR_DUP_THRESHOLD,
    min_correlation: float = MIN_CORRELATION,
) -> tuple[dict, Folds]:
    """(header, folds) for all HAM10000 training ids, grouped by lesion_id (+ ``extra_clusters``, the audit's
    duplicate clusters, found with ``near_dup_threshold`` and ``min_correlation``)."""
    manifest = metadata_manifest(metadata_csv)
    extra = [list(c) for c in extra_clusters]
    if extra:
        manifest["group"] = merged_groups(manifest, extra)
    folds = make_kfold_splits(manifest, k, seed)
    check_no_leakage(manifest, folds)
    if extra:
        words = describe_grouping("isic2018", "group", near_dup_threshold, min_correlation)
        words += f"; {len(extra)} cluster(s) merged"
    else:
        words = "lesion_id (no audit clusters merged)"
    header = make_header(manifest, "isic2018", k, seed, "group", "", grouping_description=words)
    return header, folds


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: build one canonical split file and write it (atomically) into ``--out-dir``."""
    parser = argparse.ArgumentParser(description="Write a canonical split file into data_splits/.")
    parser.add_argument("dataset", choices=["busi", "isic2018"])
    parser.add_argument("source", help="BUSI root, or HAM10000_metadata.csv for isic2018")
    parser.add_argument("--k", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--audit-root", default=None, help="isic2018: audit these images and merge near duplicates"
    )
    parser.add_argument("--out-dir", default=str(SPLITS_DIR))
    args = parser.parse_args(argv)
    if args.dataset == "busi":
        header, folds = busi_canonical(args.source, args.k, args.seed)
    else:
        report = audit_manifest(load_isic2018(args.audit_root)) if args.audit_root else None
        extra = report.near_duplicates if report is not None else []
        thresholds = (report.near_dup_threshold, report.min_correlation) if report is not None else ()
        header, folds = isic_canonical(args.source, args.k, args.seed, extra, *thresholds)
        if report is not None:
            header["audit_hash"] = report.manifest_hash
            header["audit_of"] = (
                "the local ISIC 2018 Task 3 training subset used for the near-duplicate merge"
            )
    path = save_splits(Path(args.out_dir) / split_filename(args.dataset, args.k, args.seed), header, folds)
    print(f"wrote {path}: {header}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
