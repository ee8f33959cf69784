"""A trained model as one object, read from a run folder or from an exported package; and ``medsg export``.

``predict`` and ``evaluate`` take either. Both become a ``ModelBundle``: the architecture, the class names in
order, the preprocessing, and its members (each fold's selected weights, and the final model trained on every
image when there is one), each with its temperature. Weights are always read by
``medsg.models.checkpoint`` (the one checkpoint reader) and must fit the model exactly.

An exported package (``medsg export RUN_DIR OUT_DIR``) is a folder that needs nothing else::

    package.json               format, architecture, class names, preprocessing, members and temperatures
    config.yaml                the run's resolved config
    MODEL_CARD.md              data, protocol, cross-validated metrics, intended use, known limits
    weights/fold_K.safetensors each fold's selected weights (EMA when used), tensors only; float32, or float16
                               with ``--weights-dtype float16`` (half the size; loaded back into float32)
    weights/all.safetensors    the final model (``--fold all``), when exported
    cv/summary.json, cv/oof_predictions.csv.xz the cross-validation (raw probabilities), for evaluate's report
    training_images.json, training_fingerprints.npz   the training data's reference (``medsg.deploy.reference``)
    CHECKSUMS.sha256           the SHA-256 of every other file

Loading a package checks every checksum first and refuses a missing, changed or unlisted file. Hidden files
are not package files and are ignored: the ``.gitattributes`` that export writes (``* -text``, so a git
checkout on Windows does not rewrite line endings and break the checksums), or a ``.DS_Store``.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
import lzma
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medsg.calibration import CALIBRATION_FILE, apply_temperature, decide, has_rule, lacking_words
from medsg.config import Config, dump_config, load_saved_config
from medsg.core.errors import CheckpointError, DataError
from medsg.core.io import atomic_write_bytes, atomic_write_text, publish_dir, read_json, staging_dir
from medsg.core.run_folder import ALL, CONFIG_FILE, RunFolder
from medsg.data.manifest import read_manifest
from medsg.data.transforms import build_transforms
from medsg.deploy.reference import FINGERPRINTS_FILE, STATS_FILE, write_reference
from medsg.models import create_model
from medsg.models.checkpoint import load_exact, read_checkpoint, save_safetensors, select_state_dict
from medsg.report import build_summary
from medsg.report import load_run as load_run_data
from medsg.report.ensemble import average_runs, ensemble_config
from medsg.report.model_card import render_model_card

log = logging.getLogger(__name__)

PACKAGE_FILE = "package.json"
CHECKSUMS_FILE = "CHECKSUMS.sha256"
FORMAT = 1
OOF_FILE = "oof_predictions.csv.xz"  # cv/ of a package (run and report folders keep plain .csv)
REFERENCE_DIR = "reference"  # <run_dir>/reference/: the training reference of a run, made on first use
FOLDS, FINAL = "folds", "all"
WEIGHT_DTYPES = {"float32": torch.float32, "float16": torch.float16}


@dataclass(frozen=True)
class Preprocessing:
    """How an image becomes a model input: the eval pipeline of ``medsg.data.transforms``.

    Decode, convert to RGB, resize the whole image to ``img_size`` x ``img_size`` with area interpolation
    (aspect ratio not kept), scale to [0, 1], normalise with ``mean`` / ``std``.
    """

    img_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "area"
    resize: str = "whole image to img_size x img_size, aspect ratio not kept"

    def transform(self) -> Any:
        return build_transforms(
            self.img_size, self.mean, self.std, train=False, color_aug=False, with_mask=False
        )


@dataclass
class Member:
    """One model of a bundle: a CV fold's selected weights, or the final model (``kind`` 'all').

    A seed ensemble's fold (``medsg.report.ensemble``) holds several networks, one per seed: ``weights`` and
    ``more_weights``; their softmax outputs are averaged before the member's temperature and prior shift,
    as the ensemble's calibration was fitted on such averages."""

    name: str
    kind: str  # "fold" or "all"
    weights: Path
    temperature: float
    calibration: dict[str, Any] = field(default_factory=dict)
    use_ema: bool = True
    more_weights: tuple[Path, ...] = ()

    @property
    def networks(self) -> list[Path]:
        return [self.weights, *self.more_weights]

    def calibrated(self, probs: np.ndarray, decision: str = "balanced") -> np.ndarray:
        """Raw probabilities after the member's temperature and, for a shifted rule, its prior shift."""
        return decide(apply_temperature(probs, self.temperature), self.calibration, decision)


class SoftmaxAverage(nn.Module):
    """Networks of one recipe (seeds) as one model: the log of their mean softmax, so that a softmax of its
    output is their average probability (what a seed ensemble's calibration was fitted on)."""

    def __init__(self, networks: list[nn.Module]) -> None:
        super().__init__()
        self.networks = nn.ModuleList(networks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([torch.softmax(net(x).float(), dim=1) for net in self.networks]).mean(dim=0)
        return torch.log(probs.clamp_min(torch.finfo(probs.dtype).tiny))


@dataclass
class ModelBundle:
    """A trained model ready to predict, from a run folder (``kind`` 'run') or a package ('package')."""

    source: Path
    kind: str
    arch: str
    class_names: list[str]
    preprocessing: Preprocessing
    members: list[Member]
    config: Config  # the run's config.yaml, typed (``load_saved_config``)
    default: str = FOLDS

    def select(self, which: str | None = None) -> list[Member]:
        """The members to predict with: the fold ensemble ('folds'), the final model ('all') or the default."""
        which = which or self.default
        chosen = [m for m in self.members if (m.kind == "all") == (which == FINAL)]
        if not chosen:
            have = sorted({FINAL if m.kind == "all" else FOLDS for m in self.members})
            raise DataError(f"{self.source} has no '{which}' model (it has: {have}); choose one of those")
        return chosen

    def build(self, member: Member, device: torch.device | str = "cpu") -> nn.Module:
        """The member's model in eval mode, its weights loaded exactly (no head replaced, nothing dropped);
        several networks (a seed ensemble's fold) become one ``SoftmaxAverage``."""
        nets = []
        for weights in member.networks:
            model = create_model(self.arch, self.preprocessing.img_size, num_classes=len(self.class_names))
            load_exact(model, weights, use_ema=member.use_ema)
            nets.append(model)
        return (nets[0] if len(nets) == 1 else SoftmaxAverage(nets)).to(device).eval()

    @property
    def tta(self) -> bool:
        """Whether the members were calibrated on two-view means (``eval.tta``): predict then always averages
        the image and its horizontal flip, as the cross-validation that scored the model did."""
        return self.config.eval.tta

    @property
    def decision(self) -> str:
        """The decision rule of the run (``eval.decision``; ``balanced`` for runs made before it existed)."""
        return self.config.eval.decision

    def check_decision(self, members: list[Member]) -> str:
        """The bundle's decision rule, after checking that every member can apply it."""
        decision = self.decision
        lacking = [m.name for m in members if not has_rule(m.calibration, decision)]
        if lacking:
            raise DataError(
                f"{self.source}: eval.decision is {decision}, but members {lacking} have no "
                f"{lacking_words(decision)} (calibrated before medsg fitted one); export the run again from a "
                "current medsg run"
            )
        return decision

    def oof_path(self) -> Path | None:
        """The cross-validation's pooled out-of-fold predictions: a run folder's ``oof_predictions.csv``, a
        package's ``cv/`` copy (xz-compressed since 2026-12-06); None where there is none."""
        names = [Path("cv") / OOF_FILE, Path("cv") / "oof_predictions.csv"]
        if self.kind != "package":
            names = [Path("oof_predictions.csv")]
        return next((self.source / n for n in names if (self.source / n).is_file()), None)

    def audit_rules(self) -> tuple[int, float]:
        """(near-duplicate threshold, min correlation) of the training run's audit."""
        audit = self.config.data.audit
        return audit.near_dup_threshold, audit.min_correlation


def load_model(path: str | Path) -> ModelBundle:
    """A run folder (``config.yaml``) or a package (``package.json``, checksums verified) as a bundle."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"model folder {path} does not exist; name a medsg run folder or an exported package")
    if (path / PACKAGE_FILE).is_file():
        return load_package(path)
    if RunFolder(path).config.is_file():
        return load_run(path)
    raise DataError(
        f"{path} is neither a medsg run folder (no config.yaml) nor an exported package (no {PACKAGE_FILE})"
    )


# ---------------------------------------------------------------- run folders


def _temperature(fold_path: Path) -> tuple[float, dict[str, Any]]:
    record = read_json(fold_path / CALIBRATION_FILE, default={})
    if not record:
        return 1.0, {
            "fitted": False,
            "reason": "no calibration.json (fold trained before calibration existed)",
        }
    return float(record["temperature"]), record


def load_run(run_dir: str | Path) -> ModelBundle:
    """The finished folds of a run folder (and its final model, if trained) as a bundle."""
    import timm

    run_dir = Path(run_dir)
    run = RunFolder(run_dir)
    cfg = load_saved_config(run_dir)
    members = []
    for folder in [*run.folds(cfg.splits.k), run.final]:
        if folder.done:
            temperature, record = _temperature(folder.path)
            kind = "all" if folder.name == ALL else "fold"
            weights = folder.checkpoint("best")
            members.append(Member(str(folder.name), kind, weights, temperature, record, cfg.train.ema))
    if not members:
        hint = (
            f"; {run_dir / 'model'} is a package: did you mean it?"
            if (Path(run_dir) / "model" / "package.json").is_file()
            else "; train it with `medsg run` first"
        )
        raise DataError(f"{run_dir} has no finished fold (fold_K/DONE){hint}")
    state = read_checkpoint(members[0].weights)
    names = [str(n) for n in state.get("class_names", [])]
    if not names:
        raise CheckpointError(
            f"{members[0].weights} does not record its class names; it is not a medsg checkpoint"
        )
    model = create_model(cfg.model.name, cfg.model.img_size, num_classes=len(names))
    data_cfg = timm.data.resolve_data_config({}, model=model)
    prep = Preprocessing(cfg.model.img_size, tuple(data_cfg["mean"]), tuple(data_cfg["std"]))
    default = FOLDS if any(m.kind == "fold" for m in members) else FINAL
    return ModelBundle(run_dir, "run", cfg.model.name, names, prep, members, cfg, default)


def run_reference_dir(run_dir: Path) -> Path:
    """``<run_dir>/reference/``, describing the run's training images (made once, from manifest.csv)."""
    out = Path(run_dir) / REFERENCE_DIR
    if not ((out / STATS_FILE).is_file() and (out / FINGERPRINTS_FILE).is_file()):
        manifest = read_manifest(Path(run_dir) / "manifest.csv")
        log.info("describing the %d training images of %s (once)", len(manifest), run_dir)
        write_reference(list(manifest["id"]), list(manifest["path"]), out)
    return out


def reference_dir(bundle: ModelBundle) -> Path:
    """Where the bundle's training reference lies (a package ships it; a run makes it on first use)."""
    return bundle.source if bundle.kind == "package" else run_reference_dir(bundle.source)


# ---------------------------------------------------------------- packages


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_package(path: str | Path) -> dict[str, str]:
    """Check every file of a package against ``CHECKSUMS.sha256``; refuse any difference. Returns the list."""
    path = Path(path)
    listing = path / CHECKSUMS_FILE
    advice = "the package was changed or damaged after export; export it again or restore the original copy"
    if not listing.is_file():
        raise CheckpointError(f"{listing} is missing: {advice}")
    expected: dict[str, str] = {}
    for line in listing.read_text(encoding="utf-8").splitlines():
        digest, _, name = line.partition("  ")
        if name:
            expected[name] = digest
    present = {p.relative_to(path).as_posix() for p in _package_files(path)} - {CHECKSUMS_FILE}
    missing = sorted(set(expected) - present)
    unlisted = sorted(present - set(expected))
    changed = sorted(n for n in set(expected) & present if sha256_file(path / n) != expected[n])
    if missing or unlisted or changed:
        parts = [
            f"{label}: {names[:5]}"
            for label, names in (("changed", changed), ("missing", missing), ("not listed", unlisted))
            if names
        ]
        raise CheckpointError(f"package {path} failed its checksum check ({'; '.join(parts)}): {advice}")
    return expected


def load_package(path: str | Path) -> ModelBundle:
    """An exported package as a bundle, after ``verify_package``."""
    path = Path(path)
    verify_package(path)
    meta = read_json(path / PACKAGE_FILE)
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path / PACKAGE_FILE} has format {meta.get('format')!r}; this medsg reads format {FORMAT}"
        )
    names = list(meta["class_names"])
    if len(names) != int(meta["num_classes"]) or len(set(names)) != len(names):
        raise CheckpointError(f"{path / PACKAGE_FILE}: class_names {names} do not match num_classes")
    prep = meta["preprocessing"]
    members = []
    for m in meta["members"]:  # "weights": one file, or a list (a seed ensemble's fold)
        files = [path / w for w in (m["weights"] if isinstance(m["weights"], list) else [m["weights"]])]
        calibration = m.get("calibration", {})
        members.append(
            Member(
                m["name"],
                m["kind"],
                files[0],
                float(m["temperature"]),
                calibration,
                more_weights=tuple(files[1:]),
            )
        )
    config = load_saved_config(path)
    preprocessing = Preprocessing(int(prep["img_size"]), tuple(prep["mean"]), tuple(prep["std"]))
    return ModelBundle(path, "package", meta["arch"], names, preprocessing, members, config, meta["default"])


def _package_files(folder: Path) -> list[Path]:
    """Every file of a package folder, hidden ones (``.gitattributes``, ``.DS_Store``) left out."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def _write_checksums(out: Path) -> None:
    files = [p for p in _package_files(out) if p.name != CHECKSUMS_FILE]
    lines = [f"{sha256_file(p)}  {p.relative_to(out).as_posix()}" for p in files]
    atomic_write_text(out / CHECKSUMS_FILE, "\n".join(lines) + "\n")


def _members_to_export(bundle: ModelBundle, which: str, k: int) -> list[Member]:
    folds = [m for m in bundle.members if m.kind == "fold"]
    final = [m for m in bundle.members if m.kind == "all"]
    if which in (FOLDS, "both") and len(folds) != k:
        done = [m.name for m in folds]
        raise DataError(
            f"{bundle.source}: only folds {done} of {k} are finished; the ensemble needs every fold "
            "(finish them with `medsg run`, or export the final model alone with --models all)"
        )
    if which in (FINAL, "both") and not final:
        raise DataError(f"{bundle.source} has no final model: train it with `medsg run CONFIG --fold all`")
    return {FOLDS: folds, FINAL: final, "both": folds + final}[which]


def cast_weights(state_dict: dict[str, torch.Tensor], dtype: str) -> dict[str, torch.Tensor]:
    """Floating tensors stored as ``dtype`` (one of ``WEIGHT_DTYPES``); integer buffers are left as they are."""
    target = WEIGHT_DTYPES[dtype]
    return {k: v.to(target) if v.is_floating_point() else v for k, v in state_dict.items()}


def _seed_ensemble(
    run_dir: Path, seeds: list[Path], out_dir: Path, name: str | None
) -> tuple[list[Member], dict[str, Any], Any, str]:
    """A seed ensemble's fold members (each fold's networks of every run, with the calibration refitted on
    their averaged inner validation predictions), its summary, its ``RunData`` (``medsg.report.ensemble``) and
    its config.yaml text."""
    dirs = [run_dir, *seeds]
    runs = [load_run_data(d) for d in dirs]
    data = average_runs(runs, out_dir, name or f"{run_dir.name}_seeds{len(dirs)}")
    bundles = [load_run(d) for d in dirs]
    members = []
    for fold, record in sorted(data.calibration.items()):
        nets = [next(m for m in b.members if m.kind == "fold" and m.name == str(fold)) for b in bundles]
        members.append(
            Member(
                str(fold),
                "fold",
                nets[0].weights,
                float(record["temperature"]),
                record,
                nets[0].use_ema,
                more_weights=tuple(n.weights for n in nets[1:]),
            )
        )
    cfg = data.config
    summary = build_summary(data, n_bootstrap=cfg.eval.bootstrap, seed=cfg.experiment.seed)
    return members, summary, data, dump_config(ensemble_config(runs[0], data))


def export_package(
    run_dir: str | Path,
    out_dir: str | Path,
    models: str | None = None,
    weights_dtype: str = "float32",
    seeds: list[Path] | None = None,
    name: str | None = None,
) -> Path:
    """``medsg export``: write the package of a finished run into ``out_dir`` (replaced whole if it exists).

    ``models``: 'folds' (the ensemble), 'all' (the final model) or 'both'; default: both when the final
    model exists, else folds. The ensemble stays the default for prediction whenever it is shipped.
    ``weights_dtype`` 'float16' halves the weights' size (a package kept in git); they load back into float32,
    so predictions move by rounding only (``package.json`` records the dtype). ``seeds``: run folders of the
    same recipe with other seeds; the package is then their seed ensemble (``name``), folds only, each fold
    averaging its networks' probabilities under the calibration refitted for the average.
    """
    run_dir, out_dir, seeds = Path(run_dir), Path(out_dir), [Path(d) for d in seeds or []]
    if weights_dtype not in WEIGHT_DTYPES:
        raise DataError(f"weights dtype {weights_dtype!r} is not one of {sorted(WEIGHT_DTYPES)}")
    if out_dir.is_dir() and not (out_dir / PACKAGE_FILE).is_file() and any(out_dir.iterdir()):
        raise DataError(f"{out_dir} exists and is not a medsg package; choose an empty or new folder")
    if seeds and models not in (None, FOLDS):
        raise DataError(
            f"--models {models}: a seed ensemble ships its folds only (its runs' final models were never "
            "averaged or measured); export with --models folds"
        )
    bundle = load_run(run_dir)
    k = bundle.config.splits.k
    has_final = any(m.kind == "all" for m in bundle.members) and not seeds
    config_text = RunFolder(run_dir).config.read_text(encoding="utf-8")
    if seeds:
        chosen, summary, data, config_text = _seed_ensemble(run_dir, seeds, out_dir, name)
        experiment, oof_text = data.config.experiment.name, data.oof.to_csv(index=False)
        summary_text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    else:
        chosen = _members_to_export(bundle, models or ("both" if has_final else FOLDS), k)
        summary = read_json(run_dir / "summary.json", default={})
        if any(m.kind == "fold" for m in chosen) and not summary:
            raise DataError(f"{run_dir / 'summary.json'} is missing: run `medsg report {run_dir}` first")
        experiment, data = bundle.config.experiment.name, None
        summary_text = (run_dir / "summary.json").read_text(encoding="utf-8") if summary else None
        oof = run_dir / "oof_predictions.csv"
        oof_text = oof.read_text(encoding="utf-8") if oof.is_file() and chosen[0].kind == "fold" else None
        _check_summary_matches_predictions(summary, oof_text, run_dir)
    staging = staging_dir(out_dir)
    records = [_export_member(m, staging, weights_dtype) for m in chosen]
    reference = run_reference_dir(run_dir)
    for file in (STATS_FILE, FINGERPRINTS_FILE):
        shutil.copyfile(reference / file, staging / file)
    if any(m.kind == "fold" for m in chosen):
        (staging / "cv").mkdir(parents=True, exist_ok=True)
        atomic_write_text(staging / "cv" / "summary.json", summary_text)  # a run's, byte for byte
        if oof_text is not None:
            atomic_write_bytes(staging / "cv" / OOF_FILE, lzma.compress(oof_text.encode("utf-8")))
    # config.yaml travels byte for byte (provenance and paths as written), so the package says what the run said
    atomic_write_text(staging / CONFIG_FILE, config_text)
    meta = {
        "format": FORMAT,
        "arch": bundle.arch,
        "num_classes": len(bundle.class_names),
        "class_names": bundle.class_names,
        "preprocessing": asdict(bundle.preprocessing),
        "members": records,
        "default": FOLDS if any(m.kind == "fold" for m in chosen) else FINAL,
        "weights_dtype": weights_dtype,
        "calibrated": "probabilities are temperature-scaled per member (see calibration), then averaged",
        "experiment": experiment,
        "provenance": bundle.config.saved_provenance,
    }
    if data is not None:
        meta["ensemble"] = {k: v for k, v in data.ensemble.items() if k != "protocol"}
    atomic_write_text(staging / PACKAGE_FILE, json.dumps(meta, indent=2) + "\n")
    stats = read_json(staging / STATS_FILE, default={})
    final_plan = read_json(RunFolder(run_dir).final.file("final.json"), default={}) if has_final else {}
    atomic_write_text(
        staging / "MODEL_CARD.md", render_model_card(meta, bundle.config, summary, stats, final_plan)
    )
    atomic_write_text(
        staging / ".gitattributes", "# medsg package: byte-exact files (see CHECKSUMS.sha256)\n* -text\n"
    )
    _write_checksums(staging)
    publish_dir(staging, out_dir)
    n = sum(len(m.networks) for m in chosen)
    log.info("exported %d network(s) of %s to %s (%s weights)", n, run_dir, out_dir, weights_dtype)
    return out_dir


def _check_summary_matches_predictions(summary: dict[str, Any], oof_text: str | None, run_dir: Path) -> None:
    """A package's cv/ must describe its own predictions: a report killed between its two files, or one
    written by hand, would ship a summary of other predictions."""
    n = summary.get("n_pooled")
    if oof_text is None or n is None:
        return
    rows = sum(1 for _ in csv.reader(io.StringIO(oof_text))) - 1  # the header aside
    if rows != n:
        raise DataError(
            f"{run_dir / 'summary.json'} pools {n} images but {run_dir / 'oof_predictions.csv'} holds {rows}: "
            f"they come from different reports; run `medsg report {run_dir}` again, then export"
        )


def _export_member(member: Member, staging: Path, weights_dtype: str) -> dict[str, Any]:
    """Write a member's networks into ``staging/weights/`` and return its package.json record."""
    files, epochs, selected = [], [], []
    for i, checkpoint in enumerate(member.networks):
        weights, _ = select_state_dict(read_checkpoint(checkpoint), use_ema=member.use_ema)
        file = f"weights/{member.name}{f'_{i}' if i else ''}.safetensors"
        save_safetensors(cast_weights(weights, weights_dtype), staging / file)
        info = read_json(
            checkpoint.parent / ("final.json" if member.kind == "all" else "metrics.json"), default={}
        )
        files.append(file)
        epochs.append(info.get("epochs_trained"))
        selected.append(info.get("best_epoch"))
    single = len(files) == 1
    return {
        "name": member.name,
        "kind": member.kind,
        "weights": files[0] if single else files,
        "temperature": member.temperature,
        "calibration": member.calibration,
        "epochs": epochs[0] if single else epochs,
        "selected_epoch": selected[0] if single else selected,
    }
