"""``medsg predict MODEL INPUTS...``: class probabilities of new images with a run's or a package's models.

* Inputs are image files, folders (searched recursively for image files) or CSV listings (a ``path`` column,
  relative paths resolved against the CSV's folder, and optionally ``id``).
* Each member's probabilities are computed exactly as the run computed its test predictions (the same eval
  pipeline, float32 softmax), then temperature-scaled with the member's temperature (``medsg.calibration``).
  With ``--tta``, or always for a model trained with ``eval.tta``, a member's probability is the mean over the
  image and its horizontal flip. The ensemble's probability is the mean of the members' calibrated ones;
  ``fold_spread`` (the standard deviation across members of the predicted class's probability) is its
  uncertainty.
* Out-of-distribution flags: the folds disagree (at most half of them vote for the ensemble's class, or
  ``fold_spread`` >= ``SPREAD_FLAG``), or the image's statistics lie far outside the training images' range
  (``medsg.deploy.reference.ood_reasons``). Flagged rows are still scored; ``ood_reasons`` says why they are flagged.
* It streams: a DataLoader over the paths decodes a batch at a time and each batch's rows are written at once,
  so memory stays flat however many images there are. An input that cannot be read is named in the log and
  in ``skipped.csv``, and counted; the others go on.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from medsg.calibration import DECISION_TEXT
from medsg.core.device import torch_device
from medsg.core.errors import DataError
from medsg.core.io import atomic_write_text, read_json, remove_stale_temps, temp_prefix
from medsg.data.dataset import plain_tensor
from medsg.data.generic import IMAGE_SUFFIXES, csv_records, image_files_below
from medsg.data.transforms import flip_views
from medsg.deploy.package import Member, ModelBundle, load_model, reference_dir
from medsg.deploy.reference import (
    FINGERPRINTS_FILE,
    STATS_FILE,
    Fingerprints,
    fingerprint,
    ood_reasons,
    overlap,
    read_image_stats,
)
from medsg.explain.cases import Case
from medsg.explain.ensemble import explain_ensemble

log = logging.getLogger(__name__)

AGREEMENT_FLAG = 0.5  # flagged when at most this share of the members votes for the ensemble's class
SPREAD_FLAG = 0.25  # ... or when the members' probabilities of that class spread this much (SD)
CALIBRATION_NOTE = "calibrated: each model's probabilities are temperature-scaled before they are averaged"


@dataclass(frozen=True)
class InputItem:
    """One image to predict; ``label`` is the true class index when known (``evaluate``)."""

    id: str
    path: str
    label: int | None = None


# ---------------------------------------------------------------- inputs


def _csv_items(path: Path) -> Iterator[tuple[str, str]]:
    """(id, image path) of each row of a CSV listing, read as the csv adapter reads its table (BOM, ``,``,
    ``;`` or tab); relative paths are relative to the CSV's folder."""
    header, rows = csv_records(path, required=("path",))
    if "path" not in header:
        raise DataError(f"{path}: a CSV listing needs a 'path' column (and may have 'id'); found {header}")
    at_path, at_id = header.index("path"), header.index("id") if "id" in header else None
    for _, cells in rows:
        image = Path(cells[at_path])
        image = image if image.is_absolute() else path.parent / image
        yield ((cells[at_id] if at_id is not None else "") or cells[at_path]), str(image)


def list_inputs(inputs: Sequence[str | Path]) -> list[InputItem]:
    """Every image named by ``inputs`` (files, folders, CSV listings), with unique ids.

    A path that does not exist is kept: reading it fails later and it is skipped and counted like any other
    unreadable input. Ids are file names, paths relative to a given folder, or a CSV's ``id``.
    """
    pairs: list[tuple[str, str]] = []
    for given in inputs:
        path = Path(given)
        if path.is_dir():
            pairs += [(p.relative_to(path).as_posix(), str(p)) for p in image_files_below(path)]
        elif path.suffix.lower() == ".csv" and path.is_file():
            pairs += list(_csv_items(path))
        else:
            pairs.append((path.name or str(path), str(path)))
    seen: dict[str, int] = {}
    items = []
    for image_id, path in pairs:
        seen[image_id] = seen.get(image_id, 0) + 1
        unique = image_id if seen[image_id] == 1 else f"{image_id}~{seen[image_id]}"
        items.append(InputItem(unique, path))
    return items


class ImageFiles(Dataset):
    """Items through the eval pipeline; a failure becomes an item with its reason instead of an exception."""

    def __init__(self, items: Sequence[InputItem], transform: Any, with_stats: bool) -> None:
        self.items, self.transform, self.with_stats = list(items), transform, with_stats

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        try:
            if not Path(item.path).is_file():
                raise FileNotFoundError("file not found")
            sample = self.transform({"id": item.id, "image": item.path, "mask": []})
            stats = read_image_stats(item.path) if self.with_stats else None
            return {
                "index": index,
                "image": plain_tensor(sample["image"]).float(),
                "stats": stats,
                "error": "",
            }
        except Exception as exc:  # noqa: BLE001 - any unreadable input is skipped and named, never fatal
            return {"index": index, "image": None, "stats": None, "error": failure_reason(exc)}


def failure_reason(exc: BaseException) -> str:
    """The reader's own words for a failure: MONAI wraps it as 'applying transform <object ...>', which says
    nothing to a user, so the chain is followed down to the exception that names the file's problem."""
    while exc.__cause__ is not None and str(exc).startswith("applying transform"):
        exc = exc.__cause__
    return " ".join(str(exc).split())[:300] or type(exc).__name__


def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
    """Readable items stacked into one tensor; unreadable ones listed with their reasons."""
    good = [b for b in batch if b["image"] is not None]
    return {
        "index": [b["index"] for b in good],
        "images": torch.stack([b["image"] for b in good]) if good else None,
        "stats": [b["stats"] for b in good],
        "bad": [(b["index"], b["error"]) for b in batch if b["image"] is None],
    }


# ---------------------------------------------------------------- the ensemble


@torch.no_grad()
def raw_probs(model: nn.Module, images: torch.Tensor) -> np.ndarray:
    """Softmax probabilities as ``medsg.train.evaluate.predict`` makes them (float32 softmax, float64 rows)."""
    out = torch.softmax(model(images).float(), dim=1).cpu().numpy().astype(np.float64)
    return out / out.sum(axis=1, keepdims=True)


def member_probs(
    models: Sequence[nn.Module],
    members: Sequence[Member],
    images: torch.Tensor,
    tta: bool = False,
    decision: str = "balanced",
    fitted_tta: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """(calibrated, raw) probabilities of every member, each (M, B, C): calibrated is after the member's
    temperature and, for a shifted decision (``prior``, ``majority_floor``), its prior shift.

    With ``fitted_tta`` (a run trained with ``eval.tta``, whose calibration was fitted on two-view means) the
    raw probability is the mean over the image and its horizontal flip, calibrated once, as in cross-validation
    (equal to its probabilities up to float rounding).
    With ``tta`` alone (a model calibrated on single views) each view is calibrated, then the two are averaged.
    """
    views = flip_views(images, tta or fitted_tta)
    calibrated, raw = [], []
    for model, member in zip(models, members, strict=True):
        per_view = [raw_probs(model, v) for v in views]
        if len(per_view) == 1:
            raw.append(per_view[0])  # one view: exactly raw_probs, as before TTA existed
        else:
            mean = np.mean(per_view, axis=0)
            raw.append(mean / mean.sum(axis=1, keepdims=True))
        if fitted_tta:
            calibrated.append(member.calibrated(raw[-1], decision))
        else:
            calibrated.append(np.mean([member.calibrated(p, decision) for p in per_view], axis=0))
    return np.stack(calibrated), np.stack(raw)


def ensemble_probs(calibrated: np.ndarray) -> np.ndarray:
    """The ensemble's probabilities: the mean of the members' calibrated probabilities (M, B, C) -> (B, C)."""
    return calibrated.mean(axis=0)


def disagreement(calibrated: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(spread, agreement) per image: SD across members of the predicted class's probability, and the share
    of members whose own prediction is the ensemble's. NaN for a single model (nothing to disagree with)."""
    m, b = calibrated.shape[:2]
    if m < 2:
        return np.full(b, np.nan), np.full(b, np.nan)
    picked = calibrated[:, np.arange(b), predicted]
    agree = (calibrated.argmax(axis=2) == predicted[None, :]).mean(axis=0)
    return picked.std(axis=0, ddof=0), agree


def disagreement_reason(spread: float, agreement: float, n_models: int) -> str | None:
    if math.isnan(agreement):
        return None
    if agreement <= AGREEMENT_FLAG or spread >= SPREAD_FLAG:
        votes = round(agreement * n_models)
        return f"{DISAGREE}: {votes} of {n_models} vote for the ensemble's class, spread {spread:.2f}"
    return None


# ---------------------------------------------------------------- streaming output


class CsvStream:
    """Rows appended to a temp file beside ``path`` as they come, renamed over ``path`` when complete.

    The same guarantee as ``medsg.core.io`` (a reader sees no half-written file under ``path``), for a file too
    large to hold in memory first; an exception leaves ``path`` as it was.
    """

    def __init__(self, path: Path, columns: Sequence[str]) -> None:
        self.path, self.columns = Path(path), list(columns)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for temp in remove_stale_temps(self.path):
            log.info("removed %s, left by a predict that was stopped", temp)
        fd, self.tmp = tempfile.mkstemp(prefix=temp_prefix(self.path), suffix=".tmp", dir=self.path.parent)
        self.handle = os.fdopen(fd, "w", newline="", encoding="utf-8")
        self.writer = csv.DictWriter(self.handle, fieldnames=self.columns)
        self.writer.writeheader()
        self.n_rows = 0

    def write(self, rows: Sequence[dict[str, Any]]) -> None:
        self.writer.writerows(rows)
        self.handle.flush()
        self.n_rows += len(rows)

    def __enter__(self) -> CsvStream:
        return self

    def __exit__(self, kind: Any, *_: Any) -> None:
        try:
            if kind is None:
                self.handle.flush()
                os.fsync(self.handle.fileno())
            self.handle.close()
            if kind is None:
                mask = os.umask(0)
                os.umask(mask)
                os.chmod(self.tmp, 0o666 & ~mask)  # the usual permissions, not mkstemp's private 0600
                os.replace(self.tmp, self.path)
        finally:
            Path(self.tmp).unlink(missing_ok=True)


# ---------------------------------------------------------------- the run


@dataclass
class PredictResult:
    """What a prediction pass did; ``probs``/``raw``/``ids``/``labels`` only when asked to collect them."""

    n_inputs: int
    n_predicted: int
    skipped: list[dict[str, str]]
    n_flagged: int
    seconds: float
    flag_counts: dict[str, int] = field(default_factory=lambda: {DISAGREE: 0, UNLIKE: 0})
    summary: dict[str, Any] = field(default_factory=dict)
    ids: list[str] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    probs: list[np.ndarray] = field(default_factory=list)
    raw: list[np.ndarray] = field(default_factory=list)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)


@dataclass(frozen=True)
class PredictOptions:
    """How to predict: which members, TTA, explanations, batch size, workers, device."""

    which: str | None = None  # 'folds', 'all' or the bundle's default
    tta: bool = False
    explain: bool = False
    batch_size: int = 16
    workers: int = 0
    device: str = "cpu"


def _load_reference(bundle: ModelBundle) -> dict[str, Any] | None:
    try:
        path = reference_dir(bundle) / STATS_FILE
    except DataError as exc:
        log.warning("no training reference (%s): image-statistics flags are off", exc)
        return None
    return read_json(path, advice="export the package again")


DISAGREE, UNLIKE = "folds disagree", "unlike the training data"  # the two kinds of flag, as the CSV says them


def audit_overlap(
    bundle: ModelBundle, ids: Sequence[str], paths: Sequence[str]
) -> tuple[list[dict], list[dict]]:
    """(images that duplicate one of the model's training images, unreadable images), by the audit's rules
    (same bytes, same pixels, or a near duplicate): predictions on them are no test of the model."""
    train = Fingerprints.load(reference_dir(bundle) / FINGERPRINTS_FILE)
    test, problems = fingerprint(list(ids), list(paths))
    threshold, min_corr = bundle.audit_rules()
    return overlap(test, train, threshold, min_corr), problems


def _training_overlap(bundle: ModelBundle, items: Sequence[InputItem]) -> dict[str, str]:
    """{input id: 'exact|pixel|near duplicate of <training ids>'} for inputs found in the training data; {}
    (with a log line) when the model has no training reference."""
    try:
        rows, _ = audit_overlap(bundle, [i.id for i in items], [i.path for i in items])
    except DataError as exc:
        log.warning("no training reference (%s): inputs are not checked against the training data", exc)
        return {}
    return {r["id"]: f"{r['kind']} duplicate of {', '.join(r['train_ids'][:3])}" for r in rows}


def _row(
    item: InputItem, probs: np.ndarray, names: Sequence[str], spread: float, agree: float, reasons: list[str]
) -> dict[str, Any]:
    predicted = int(probs.argmax())
    row: dict[str, Any] = {"id": item.id, "path": item.path}
    if item.label is not None:
        row["y_true"] = item.label
    row |= {f"p_{n}": float(p) for n, p in zip(names, probs, strict=True)}
    row |= {
        "predicted": names[predicted],
        "confidence": float(probs[predicted]),
        "fold_spread": spread,
        "fold_agreement": agree,
        "ood_flag": bool(reasons),
        "ood_reasons": "; ".join(reasons),
    }
    return row


def predict_items(
    bundle: ModelBundle,
    items: Sequence[InputItem],
    out_dir: Path,
    options: PredictOptions | None = None,
    collect: bool = False,
) -> PredictResult:
    """Predict ``items`` with the bundle's members, streaming rows into ``out_dir/predictions.csv``.

    Writes ``skipped.csv`` (unreadable inputs), ``predict.json`` (what was done) and, with ``explain``,
    ``explain/<id>.png``. ``collect`` keeps ids, labels and probabilities for metrics (``evaluate``).
    """
    options = options or PredictOptions()
    out_dir = Path(out_dir)
    start = time.perf_counter()
    members: list[Member] = bundle.select(options.which)
    device = torch_device(options.device)
    decision = bundle.check_decision(members)
    models = [bundle.build(m, device) for m in members]
    reference = _load_reference(bundle)
    names = bundle.class_names
    dataset = ImageFiles(items, bundle.preprocessing.transform(), with_stats=reference is not None)
    loader = DataLoader(
        dataset, batch_size=options.batch_size, num_workers=options.workers, collate_fn=collate, shuffle=False
    )
    labelled = any(i.label is not None for i in items)
    columns = ["id", "path", *(["y_true"] if labelled else []), *(f"p_{n}" for n in names)]
    columns += ["predicted", "confidence", "fold_spread", "fold_agreement", "ood_flag", "ood_reasons"]
    columns += ["in_training_data"]
    seen = _training_overlap(bundle, items) if reference is not None else {}
    if seen:
        log.warning(
            "%d of %d inputs are in the model's training data (in_training_data in predictions.csv): their "
            "predictions say nothing about how the model does on new images",
            len(seen),
            len(items),
        )
    result = PredictResult(len(items), 0, [], 0, 0.0)
    bar = tqdm(total=len(items), desc="predict", unit="img", disable=None)
    with (
        CsvStream(out_dir / "predictions.csv", columns) as stream,
        CsvStream(out_dir / "skipped.csv", ["id", "path", "reason"]) as skipped,
    ):
        for batch in loader:
            bad = [{"id": items[i].id, "path": items[i].path, "reason": why} for i, why in batch["bad"]]
            for row in bad:
                log.warning("skipped %s: %s", row["path"], row["reason"])
            skipped.write(bad)
            result.skipped += bad
            bar.update(len(batch["index"]) + len(bad))
            if batch["images"] is None:
                continue
            images = batch["images"].to(device)
            flags: list[str] = []
            calibrated, raw = member_probs(models, members, images, options.tta, decision, bundle.tta)
            probs = ensemble_probs(calibrated)
            predicted = probs.argmax(axis=1)
            spread, agree = disagreement(calibrated, predicted)
            rows, cases = [], []
            for k, index in enumerate(batch["index"]):
                item = items[index]
                reasons = [r for r in [disagreement_reason(spread[k], agree[k], len(models))] if r]
                if reference is not None:
                    reasons += [f"{UNLIKE}: {r}" for r in ood_reasons(batch["stats"][k], reference)]
                row = _row(item, probs[k], names, float(spread[k]), float(agree[k]), reasons)
                rows.append(row | {"in_training_data": seen.get(item.id, "")})
                flags.append(row["ood_reasons"])
                result.n_flagged += bool(reasons)
                for kind in (DISAGREE, UNLIKE):
                    result.flag_counts[kind] += any(r.startswith(kind) for r in reasons)
                cases.append(Case(item.id, item.path, tuple(float(p) for p in probs[k])))
                if collect:
                    result.ids.append(item.id)
                    result.labels.append(-1 if item.label is None else item.label)
                    result.probs.append(probs[k])
                    result.raw.append(raw[:, k].mean(axis=0))
            stream.write(rows)
            result.n_predicted += len(rows)
            if options.explain:
                explain_ensemble(models, images, cases, out_dir / "explain", names, flags=flags)
    bar.close()
    result.seconds = round(time.perf_counter() - start, 2)
    result.summary = _summary(bundle, members, options, result, reference)
    atomic_write_text(out_dir / "predict.json", json.dumps(result.summary, indent=2) + "\n")
    return result


def _summary(
    bundle: ModelBundle,
    members: Sequence[Member],
    options: PredictOptions,
    result: PredictResult,
    reference: dict[str, Any] | None,
) -> dict[str, Any]:
    rate = result.n_predicted / result.seconds if result.seconds > 0 else float("nan")
    return {
        "model": str(bundle.source),
        "model_kind": bundle.kind,
        "members": [{"name": m.name, "kind": m.kind, "temperature": m.temperature} for m in members],
        "calibrated": CALIBRATION_NOTE,
        "decision": f"{bundle.decision}: {DECISION_TEXT[bundle.decision]}",
        "ensemble": "mean of the members' calibrated probabilities" if len(members) > 1 else "one model",
        "tta": _tta_words(bundle, options),
        "n_inputs": result.n_inputs,
        "n_predicted": result.n_predicted,
        "n_skipped": result.n_skipped,
        "n_flagged": result.n_flagged,
        "n_flagged_by_kind": dict(result.flag_counts),
        "seconds": result.seconds,
        "images_per_second": round(rate, 2) if math.isfinite(rate) else None,
        "ood_rules": {
            "folds": f"at most {AGREEMENT_FLAG:.0%} of the folds vote for the ensemble's class, or the SD of "
            f"their probabilities of it >= {SPREAD_FLAG}",
            "image_statistics": "see medsg.deploy.reference"
            if reference is not None
            else "off (no training reference)",
        },
    }


def _tta_words(bundle: ModelBundle, options: PredictOptions) -> str:
    """predict.json's ``tta``: none, asked for (``--tta``), or the model's own (``eval.tta``)."""
    words = "mean over the image and its horizontal flip"
    if bundle.tta:
        return f"{words} (the model's calibration was fitted on such means: eval.tta)"
    return words if options.tta else "none"


def run_predict(
    model: str | Path, inputs: Sequence[str | Path], out_dir: str | Path, options: PredictOptions
) -> PredictResult:
    """``medsg predict``: load the model (run folder or package), list the inputs, predict them."""
    bundle = load_model(model)
    items = list_inputs(inputs)
    if not items:
        raise DataError(f"no images found in {list(map(str, inputs))} (image suffixes: {IMAGE_SUFFIXES})")
    return predict_items(bundle, items, Path(out_dir), options)
