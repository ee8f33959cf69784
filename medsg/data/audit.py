"""Dataset audit: broken files, exact and near duplicates, one image under two labels.

Medical datasets are small and dirty; a duplicate split across train and test inflates every metric. The audit
decodes every image and mask once, with the training pipelines' own reader (``medsg.data.images``: DICOM, 16-bit,
CMYK, EXIF orientation, ...), records per-file problems (each naming its file, what is wrong and what to do), and
finds

* exact duplicates: identical file bytes (sha256), and pixel-identical images (sha256 of the decoded RGB
  pixels, which also catches a lossless re-encode);
* near duplicates: a 256-bit difference hash (dHash on a 17x16 grayscale thumbnail) and the Pearson
  correlation of 32x32 grayscale thumbnails (each standardised, so a brightness or contrast shift does not
  matter). Two images are near duplicates when their dHash Hamming distance is <= ``near_dup_threshold``
  (default 40 of 256 bits, 16 %) **and** the correlation is >= ``min_correlation`` (default 0.95).
  Why both: on the real BUSI set the 64-bit dHash has a clean valley at 5-8 bits, but on ISIC 2018 dermoscopy
  unrelated lesions (a smooth dark blob in the centre) reach distance 0-4 and chain into clusters of hundreds
  of images. With the 256-bit hash no two distinct ISIC subset images come closer than 25 bits, while BUSI's
  re-saved / re-annotated copies sit at 0-40 bits with thumbnail correlation 0.96-1.0 (inspected by eye).
  Near-duplicate pairs are clustered transitively with union-find;
* cross-class conflicts: an exact or pixel-identical image under two or more labels (BUSI ships
  ``benign (433).png`` == ``malignant (145).png``). Near duplicates spanning labels are listed separately as
  ``near_conflicts`` (they are grouped, never dropped automatically).

``apply_audit_policy`` turns the report into a clean manifest: broken images are dropped, broken masks are
removed from ``mask_paths``, conflicts are dropped (default) or kept, and every duplicate cluster becomes one
group so no duplicate can straddle a train/test boundary.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import sys
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from medsg.core.errors import DataError
from medsg.core.io import atomic_write_text
from medsg.data.images import decode_image, read_mask
from medsg.data.manifest import COLUMNS, MASK_SEP, mask_list
from medsg.data.pixels import UnreadableImage

log = logging.getLogger(__name__)

NEAR_DUP_THRESHOLD = 40  # Hamming distance out of 256 dHash bits
MIN_CORRELATION = 0.95  # Pearson correlation of standardised 32x32 grayscale thumbnails
ERROR_KINDS = frozenset(  # the image (or mask) cannot be used: the policy drops it
    {
        "missing_file",
        "unreadable_file",
        "zero_byte",
        "not_image",
        "truncated",
        "corrupt",
        "too_large",
        "degenerate",
        "unsupported_mode",
        "no_pixel_data",
        "missing_decoder",
        "unsupported_transfer_syntax",
        "mask_size_mismatch",
    }
)
# What to do about each problem that has no remedy of its own (decoding errors carry theirs).
ACTIONS: dict[str, str] = {
    "missing_mask": "add its mask file (BUSI: '<image>_mask.png' beside it; CSV: the 'mask' column), or ignore "
    "this if the image shows no lesion; it is kept, without a mask",
    "orphan_mask": "add the image it belongs to, or delete the mask",
    "mask_size_mismatch": "re-export the mask at its image's size; the policy leaves it out and keeps the image",
    "flat_image": "check that it is not blank (every pixel has one value); remove it if it is",
    "mask": "re-export the mask file; the policy leaves it out and keeps the image",
    "image": "the policy drops this image from runs",
}
_HASH_SIZE = 16  # dHash grid: 16 x 16 = 256 bits
_THUMB = 32


# --------------------------------------------------------------------------------------------- per file
def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes, read in chunks (a cine loop can be a gigabyte)."""
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def inspect_file(path: str | Path, fingerprint: bool = True) -> dict[str, Any]:
    """Decode one image by ``medsg.data.images`` (the pipelines' own reader) and describe it.

    Returns its sha256, size (width, height as loaded), format, mode, problem kind (or None) with ``detail``
    (what is wrong) and ``action`` (what to do), ``notes`` (warnings about a file that loads) and, for usable
    images when ``fingerprint``, the hashes the duplicate search needs.
    """
    path = Path(path)
    out: dict[str, Any] = {
        "sha256": None,
        "size": None,
        "format": None,
        "mode": None,
        "problem": None,
        "detail": "",
        "action": "",
        "notes": [],
    }
    with contextlib.suppress(OSError):  # missing or unreadable: decode_image names it
        out["sha256"] = file_sha256(path)
    try:
        decoded = decode_image(path)
    except UnreadableImage as exc:
        size = list(exc.size) if exc.size else None
        return {**out, "size": size, "problem": exc.kind, "detail": exc.reason, "action": exc.action}
    notes = [asdict(note) for note in decoded.notes]
    if decoded.pixels.min() == decoded.pixels.max():
        notes.append(
            {"kind": "flat_image", "detail": "every pixel has one value", "action": ACTIONS["flat_image"]}
        )
    out.update(format=decoded.format, mode=decoded.mode, size=list(decoded.size), notes=notes)
    if fingerprint:
        out.update(_fingerprint(decoded.pixels))
    return out


def inspect_mask(path: str | Path) -> dict[str, Any]:
    """Read one mask as the pipelines do; its size (width, height) or its problem with detail and action."""
    try:
        mask = read_mask(path)
    except UnreadableImage as exc:
        return {"size": None, "problem": exc.kind, "detail": exc.reason, "action": exc.action}
    return {"size": [int(mask.shape[1]), int(mask.shape[0])], "problem": None, "detail": "", "action": ""}


def _fingerprint(pixels: np.ndarray) -> dict[str, Any]:
    rgb = Image.fromarray(pixels)
    digest = hashlib.sha256(f"{rgb.size}".encode() + rgb.tobytes()).hexdigest()
    gray = rgb.convert("L")
    grid = np.asarray(gray.resize((_HASH_SIZE + 1, _HASH_SIZE), Image.BOX), dtype=np.float32)
    dhash = np.packbits((grid[:, 1:] > grid[:, :-1]).ravel()).tobytes().hex()
    thumb = np.asarray(gray.resize((_THUMB, _THUMB), Image.BOX), dtype=np.float32).ravel()
    return {"pixel_sha256": digest, "dhash": dhash, "thumb": thumb}


# --------------------------------------------------------------------------------------------- clustering
class UnionFind:
    """Disjoint sets over hashable items; ``groups()`` lists the sets."""

    def __init__(self, items: Iterable[Any] = ()) -> None:
        self.parent: dict[Any, Any] = {x: x for x in items}

    def find(self, x: Any) -> Any:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: Any, b: Any) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)

    def groups(self) -> list[list[Any]]:
        """Every set, each sorted (singletons included)."""
        out: dict[Any, list[Any]] = defaultdict(list)
        for x in self.parent:
            out[self.find(x)].append(x)
        return [sorted(v) for v in out.values()]


def _clusters_by_key(ids: Sequence[str], keys: Sequence[str | None]) -> list[list[str]]:
    """Sorted clusters of 2+ ids sharing a key (a hash); ids whose key is None take no part."""
    by: dict[str, list[str]] = defaultdict(list)
    for i, k in zip(ids, keys, strict=True):
        if k:
            by[k].append(i)
    return sorted(sorted(v) for v in by.values() if len(v) > 1)


def near_duplicate_pairs(
    dhashes: np.ndarray, thumbs: np.ndarray, threshold: int, min_correlation: float, chunk: int = 256
) -> list[tuple[int, int, int, float]]:
    """All index pairs (i<j) with dHash distance <= threshold and thumbnail correlation >= min_correlation.

    ``dhashes``: (n, 32) uint8 packed bits; ``thumbs``: (n, 1024) float. Chunked so 10k images stay small.
    """
    n = len(dhashes)
    if n < 2:
        return []
    words = np.ascontiguousarray(dhashes).view(np.uint64)  # (n, 4)
    z = thumbs - thumbs.mean(axis=1, keepdims=True)
    z /= np.linalg.norm(z, axis=1, keepdims=True) + 1e-8
    pairs = []
    for start in range(0, n, chunk):
        block = words[start : start + chunk]
        dist = np.zeros((len(block), n), dtype=np.int32)
        for w in range(words.shape[1]):
            dist += np.bitwise_count(block[:, None, w] ^ words[None, :, w])
        rows, cols = np.nonzero(dist <= threshold)
        keep = cols > rows + start
        rows, cols = rows[keep], cols[keep]
        if len(rows):
            corr = np.einsum("ij,ij->i", z[rows + start], z[cols])
            for r, c, k in zip(rows, cols, corr, strict=True):
                if k >= min_correlation:
                    pairs.append((int(r + start), int(c), int(dist[r, c]), float(k)))
    return pairs


# --------------------------------------------------------------------------------------------- report
@dataclass
class AuditReport:
    """What the audit found; ``manifest_hash`` identifies the audited content (ids, labels, file bytes)."""

    n_images: int
    problems: list[dict[str, Any]] = field(default_factory=list)
    exact_duplicates: list[list[str]] = field(default_factory=list)
    pixel_duplicates: list[list[str]] = field(default_factory=list)
    near_duplicates: list[list[str]] = field(default_factory=list)
    near_pairs: list[dict[str, Any]] = field(default_factory=list)
    conflicts: list[dict[str, Any]] = field(default_factory=list)
    near_conflicts: list[dict[str, Any]] = field(default_factory=list)
    manifest_hash: str = ""
    near_dup_threshold: int = NEAR_DUP_THRESHOLD
    min_correlation: float = MIN_CORRELATION
    method: str = "sha256(bytes), sha256(RGB pixels), dHash-256 + 32x32 thumbnail correlation"
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-serialisable dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> AuditReport:
        """Inverse of ``to_dict`` (for reading audit.json back)."""
        return cls(**data)

    def broken_ids(self) -> set[str]:
        """Ids whose image cannot be used (any error on the image file itself)."""
        return {p["id"] for p in self.problems if p["role"] == "image" and p["severity"] == "error"}

    def conflict_ids(self) -> set[str]:
        """Ids of images that appear under more than one label."""
        return {i for c in self.conflicts for i in c["ids"]}


def _problem(row_id: str, path: str, role: str, kind: str, detail: str, action: str = "") -> dict[str, Any]:
    """One problem: the file, what is wrong (``detail``) and what to do (``action``)."""
    severity = "error" if kind in ERROR_KINDS else "warning"
    action = action or ACTIONS.get(kind) or ACTIONS[role]
    if severity == "error" and role == "image":
        action = f"{action}; {ACTIONS['image']}"
    return {
        "id": row_id,
        "path": path,
        "role": role,
        "kind": kind,
        "detail": detail,
        "action": action,
        "severity": severity,
    }


def audit_manifest(
    manifest: pd.DataFrame,
    near_dup_threshold: int = NEAR_DUP_THRESHOLD,
    min_correlation: float = MIN_CORRELATION,
    progress: bool = False,
) -> AuditReport:
    """Decode every image and mask of ``manifest`` and report problems, duplicates and conflicts.

    Images are read by ``medsg.data.images.decode_image``, the reader of the training pipelines, so what
    passes here is exactly what training reads. Masks are checked too: decodable and the size of their image.
    Within a class where at least one image has a mask, an image without one gets a ``missing_mask`` warning
    (BUSI ships masks for every image, empty ones for ``normal``). Mask files an adapter found without an image
    (``manifest.attrs["orphan_masks"]``) are reported as ``orphan_mask`` warnings. Every problem names its file,
    what is wrong and what to do.
    """
    t0 = time.perf_counter()
    ids = manifest["id"].astype(str).tolist()
    labels = dict(zip(ids, manifest["label_name"].astype(str), strict=True))
    problems: list[dict[str, Any]] = []
    info: dict[str, dict[str, Any]] = {}
    rows = manifest.to_dict("records")
    iterator: Iterable[dict[str, Any]] = rows
    if progress:
        from tqdm import tqdm

        iterator = tqdm(rows, desc="audit", unit="img", file=sys.stderr)
    for row in iterator:
        rid = str(row["id"])
        res = inspect_file(row["path"])
        info[rid] = res
        if res["problem"]:
            problems.append(_problem(rid, row["path"], "image", res["problem"], res["detail"], res["action"]))
        for note in res["notes"]:
            problems.append(_problem(rid, row["path"], "image", note["kind"], note["detail"], note["action"]))
        for mpath in mask_list(row["mask_paths"]):
            mres = inspect_mask(mpath)
            if mres["problem"]:
                problems.append(_problem(rid, mpath, "mask", mres["problem"], mres["detail"], mres["action"]))
            elif res["size"] and mres["size"] != res["size"]:
                detail = f"mask {tuple(mres['size'])} vs image {tuple(res['size'])} (width, height)"
                problems.append(_problem(rid, mpath, "mask", "mask_size_mismatch", detail))
    with_masks = {str(r["label_name"]) for r in rows if mask_list(r["mask_paths"])}
    for row in rows:
        missing = not mask_list(row["mask_paths"]) and not info[str(row["id"])]["problem"]
        if missing and str(row["label_name"]) in with_masks:
            detail = f"no mask file, though other '{row['label_name']}' images have one"
            problems.append(_problem(str(row["id"]), row["path"], "mask", "missing_mask", detail))
    for mpath in manifest.attrs.get("orphan_masks", []):
        problems.append(_problem("", str(mpath), "mask", "orphan_mask", "a mask file without its image"))

    good = [i for i in ids if not info[i]["problem"]]
    exact = _clusters_by_key(ids, [info[i]["sha256"] if not info[i]["problem"] else None for i in ids])
    pixel = _clusters_by_key(good, [info[i]["pixel_sha256"] for i in good])
    uf = UnionFind(good)
    for cluster in exact + pixel:
        for other in cluster[1:]:
            uf.union(cluster[0], other)
    near_pairs = []
    if len(good) > 1:
        dh = np.stack([np.frombuffer(bytes.fromhex(info[i]["dhash"]), dtype=np.uint8) for i in good])
        th = np.stack([info[i]["thumb"] for i in good])
        for a, b, dist, corr in near_duplicate_pairs(dh, th, near_dup_threshold, min_correlation):
            uf.union(good[a], good[b])
            near_pairs.append({"ids": [good[a], good[b]], "hamming": dist, "correlation": round(corr, 4)})
    near = sorted(g for g in uf.groups() if len(g) > 1)
    exact_sets = {tuple(c) for c in exact}
    conflicts = [
        {
            "ids": c,
            "labels": sorted({labels[i] for i in c}),
            "kind": "exact" if tuple(c) in exact_sets else "pixel",
        }
        for c in pixel
        if len({labels[i] for i in c}) > 1
    ]
    near_conflicts = [
        {"ids": c, "labels": sorted({labels[i] for i in c})} for c in near if len({labels[i] for i in c}) > 1
    ]
    return AuditReport(
        n_images=len(ids),
        problems=problems,
        exact_duplicates=exact,
        pixel_duplicates=pixel,
        near_duplicates=near,
        near_pairs=near_pairs,
        conflicts=conflicts,
        near_conflicts=near_conflicts,
        manifest_hash=content_hash(ids, [labels[i] for i in ids], [info[i]["sha256"] for i in ids]),
        near_dup_threshold=near_dup_threshold,
        min_correlation=min_correlation,
        seconds=round(time.perf_counter() - t0, 2),
    )


def content_hash(ids: Sequence[str], label_names: Sequence[str], sha256s: Sequence[str | None]) -> str:
    """sha256 over sorted (id, label, file sha256) lines: equal for equal data wherever it is stored."""
    lines = sorted(
        f"{i}\t{lab}\t{s or 'missing'}" for i, lab, s in zip(ids, label_names, sha256s, strict=True)
    )
    return hashlib.sha256("\n".join(lines).encode()).hexdigest()


# --------------------------------------------------------------------------------------------- output
def write_audit(report: AuditReport, path: str | Path) -> Path:
    """Write the report as JSON, atomically."""
    return atomic_write_text(path, json.dumps(report.to_dict(), indent=1) + "\n")


def read_audit(path: str | Path) -> AuditReport:
    """Read a report written by ``write_audit``."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"Audit report not found: {path}. Run `medsg audit` first.")
    try:
        return AuditReport.from_dict(json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise DataError(
            f"{path}: not a medsg audit report ({exc}); delete it and run `medsg audit` again."
        ) from exc


def describe_problem(problem: dict[str, Any]) -> str:
    """One line: severity, kind, file, what is wrong and what to do."""
    action = problem.get("action") or ACTIONS.get(problem["kind"]) or ACTIONS.get(problem["role"], "")
    role = "" if problem["role"] == "image" else f"{problem['role']} "
    return f"{problem['severity']}: {role}{problem['kind']}: {problem['path']}: {problem['detail']}; {action}"


def summarize(report: AuditReport, max_items: int = 20) -> str:
    """A readable multi-line summary for the console: every problem names its file and what to do.

    Up to ``max_items`` problems of each kind are listed; the JSON report (``medsg audit --out``) lists all.
    """
    errors = [p for p in report.problems if p["severity"] == "error"]
    warnings = [p for p in report.problems if p["severity"] != "error"]
    near_imgs = sum(len(c) for c in report.near_duplicates)
    lines = [
        f"Audit of {report.n_images} images ({report.seconds:.1f} s), content hash {report.manifest_hash[:12]}",
        f"  problems: {len(errors)} error(s), {len(warnings)} warning(s)",
    ]
    by_kind: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for p in errors + warnings:
        by_kind[f"{p['role']}:{p['kind']}"].append(p)
    for kind, items in by_kind.items():
        lines.append(f"    {kind}: {len(items)}")
        lines += [f"    - {describe_problem(p)}" for p in items[:max_items]]
        if len(items) > max_items:
            lines.append(f"    - ... {len(items) - max_items} more: write them all with --out FILE")
    lines += [
        f"  exact duplicates (same bytes): {len(report.exact_duplicates)} cluster(s)",
        f"  pixel-identical duplicates: {len(report.pixel_duplicates)} cluster(s)",
        f"  near-duplicate clusters (dHash-256 <= {report.near_dup_threshold} bits and thumbnail corr >= "
        f"{report.min_correlation}): {len(report.near_duplicates)} cluster(s), {near_imgs} images, "
        f"largest {max((len(c) for c in report.near_duplicates), default=0)}",
        f"  cross-class conflicts (same image, different labels): {len(report.conflicts)}",
    ]
    lines += [f"    - {c['ids']} labelled {c['labels']}" for c in report.conflicts[:max_items]]
    lines.append(f"  near-duplicate clusters spanning classes: {len(report.near_conflicts)}")
    lines += [f"    - {c['ids']} labelled {c['labels']}" for c in report.near_conflicts[:max_items]]
    if report.conflicts or report.near_conflicts or report.exact_duplicates or report.near_duplicates:
        lines.append(
            "  duplicates always share a group (never two folds); conflicts are dropped or kept by "
            "data.audit.conflicts"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- policy
def describe_grouping(
    adapter: str,
    grouping: str = "group",
    near_dup_threshold: Any = NEAR_DUP_THRESHOLD,
    min_correlation: Any = MIN_CORRELATION,
) -> str:
    """What a split's groups are, in words: the split header and the report's protocol both say it this way."""
    clusters = (
        "duplicate clusters from the audit (identical bytes or pixels, or dHash-256 distance <= "
        f"{near_dup_threshold} and thumbnail correlation >= {min_correlation})"
    )
    if grouping.startswith("dicom:"):
        return (
            f"DICOM header {grouping[6:]} (stored only as a salted hash; the salt is in the split file's "
            f"header) merged with {clusters}"
        )
    if grouping != "group":
        return f"column '{grouping}' merged with {clusters}"
    if adapter == "isic2018":
        return f"lesion_id merged with {clusters}"
    if adapter == "csv":
        return f"the CSV's group column (the image id where empty) merged with {clusters}"
    return f"{clusters}; every other image is its own group"


def apply_audit_policy(
    manifest: pd.DataFrame,
    report: AuditReport,
    conflicts: str = "drop",
    group_col: str = "group",
) -> pd.DataFrame:
    """Clean a manifest by the report: drop broken images (always), conflicts (if ``"drop"``), bad masks;
    then merge groups so every duplicate cluster and every existing group (e.g. a lesion) is one group.

    Extra manifest columns are kept. Merging is done on ``group`` and, when it differs, on ``group_col`` (the
    column the splits will group by, e.g. a CSV's ``patient_id``): a duplicate pair of two patients makes
    their ids one group in that column too, so no duplicate can straddle folds whichever column is used.
    Callers must pass the column they split by; other extra columns are left as they are.

    Merging is transitive (union-find): a lesion group touching a duplicate cluster absorbs it. The merged
    group's name is the smallest original group name in it, so names stay readable and deterministic.
    """
    if conflicts not in ("drop", "keep"):
        raise DataError(f"conflicts policy must be 'drop' or 'keep', got {conflicts!r}.")
    if group_col not in manifest.columns:
        raise DataError(
            f"grouping column {group_col!r} is not in the manifest (columns: {list(manifest.columns)}); "
            "add it to the data (a CSV column is passed through) or set splits.grouping to 'group'."
        )
    extras = [c for c in manifest.columns if c not in COLUMNS]
    df = manifest.loc[:, [*COLUMNS, *extras]].copy()
    broken = report.broken_ids() & set(df["id"])
    if broken:
        log.warning("Audit policy: dropping %d broken image(s): %s", len(broken), sorted(broken)[:10])
    drop = set(broken)
    if conflicts == "drop":
        conflicting = report.conflict_ids() & set(df["id"])
        if conflicting:
            log.warning(
                "Audit policy: dropping %d image(s) with conflicting labels: %s",
                len(conflicting),
                sorted(conflicting),
            )
        drop |= conflicting
    df = df[~df["id"].isin(drop)].reset_index(drop=True)

    bad_masks = {p["path"] for p in report.problems if p["role"] == "mask" and p["severity"] == "error"}
    if bad_masks:
        log.warning("Audit policy: removing %d unusable mask file(s) from mask_paths", len(bad_masks))
        df["mask_paths"] = [
            MASK_SEP.join(m for m in mask_list(v) if m not in bad_masks) for v in df["mask_paths"]
        ]
    clusters = report.near_duplicates + report.pixel_duplicates + report.exact_duplicates
    for col in dict.fromkeys(("group", group_col)):
        df[col] = merged_groups(df, clusters, col)
    return df


def merged_groups(df: pd.DataFrame, clusters: Iterable[Sequence[str]], group_col: str = "group") -> list[str]:
    """Names of ``df[group_col]`` after uniting it with id clusters (ids not in ``df`` are ignored).

    An empty or missing cell means "no known group": the row starts as its own group (its id), so rows
    lacking e.g. a patient id are not all lumped together.
    """
    uf = UnionFind()
    present = set(df["id"])
    cells = ["" if pd.isna(g) else str(g) for g in df[group_col]]
    empty = sum(not c for c in cells)
    if (
        empty and group_col != "group" and not group_col.startswith("dicom:")
    ):  # a user column; DICOM warns itself
        log.warning(
            "splits.grouping %s: %d of %d row(s) have an empty cell; each such image is a group of its own, so "
            "images of one patient among them may land in different folds. Fill the column where you can",
            group_col,
            empty,
            len(cells),
        )
    group_of = {rid: grp or str(rid) for rid, grp in zip(df["id"], cells, strict=True)}
    for rid, grp in group_of.items():
        uf.union(("g", grp), ("i", rid))
    for cluster in clusters:
        members = [i for i in cluster if i in present]
        for other in members[1:]:
            uf.union(("i", members[0]), ("i", other))
    name: dict[Any, str] = {}
    for rid, grp in group_of.items():
        root = uf.find(("i", rid))
        name[root] = min(name.get(root, grp), grp)
    return [name[uf.find(("i", rid))] for rid in df["id"]]
