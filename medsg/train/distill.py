"""Knowledge distillation: one network per fold taught by the fold's models of other runs (a seed ensemble).

A seed ensemble predicts better than any of its seeds but packages one network per seed and fold. Distillation
(Hinton et al. 2015) trains a single network to match the ensemble's softened predictions as well as the labels;
the teachers see exactly the student's augmented batch ("consistent teaching", Beyer et al. 2022), in eval mode,
and are never updated. ``train.distill_teachers`` (non-empty) selects ``DistillTrainer``; the loss is

    (1 - w) * the recipe's loss + w * T^2 * KL(mean over teachers of softmax(z_t / T) || softmax(z_s / T))

with ``w = train.distill_weight`` and ``T = train.distill_temperature`` (T^2 keeps the soft term's gradients on the
scale of the hard one's). Outer fold K is taught by each teacher's fold K model, which was trained on fold K's
training part only; ``fold_teachers`` checks that it tested exactly this fold's test images, so no teacher has seen
them. The final model (``--fold all``) is taught by the teachers' final models. Teachers live beside the model,
never inside it: checkpoints and packages hold the student alone.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from medsg.core.errors import CheckpointError, ConfigError, DataError
from medsg.core.io import ID_CSV, atomic_write_text
from medsg.core.run_folder import ALL
from medsg.deploy.package import FINAL, Member, ModelBundle, load_model, sha256_file
from medsg.train.fold import FoldTrainer, compute_loss
from medsg.train.utils import autocast

log = logging.getLogger(__name__)

__all__ = [
    "DistillTrainer",
    "check_teachers",
    "distill_loss",
    "fold_teachers",
    "teacher_members",
    "teacher_probabilities",
]


def teacher_probabilities(
    teachers: Sequence[nn.Module], images: torch.Tensor, temperature: float
) -> torch.Tensor:
    """The teachers' mean softmax at ``temperature`` (B, C): the soft target, without gradients."""
    with torch.no_grad():
        return torch.stack([F.softmax(t(images).float() / temperature, dim=1) for t in teachers]).mean(dim=0)


def distill_loss(
    student_logits: torch.Tensor, soft_targets: torch.Tensor, temperature: float
) -> torch.Tensor:
    """T^2 x KL(soft_targets || softmax(student_logits / T)), averaged over the batch: zero when the student's
    softened prediction equals the target, and its gradient pulls it there."""
    log_student = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(log_student, soft_targets, reduction="batchmean") * temperature**2


def _tested_ids(bundle: ModelBundle, member: Member) -> set[str] | None:
    """The ids member (a fold model) was tested on: its fold's predictions.csv in a run folder, its rows of the
    package's cross-validation predictions; None where neither is there."""
    if bundle.kind == "run":
        path = member.weights.parent / "predictions.csv"
        return set(pd.read_csv(path, **ID_CSV)["id"]) if path.is_file() else None
    path = bundle.oof_path()
    if path is None:
        return None
    frame = pd.read_csv(path, **ID_CSV)
    return set(frame.loc[frame["fold"].astype(str) == member.name, "id"])


def _check_input(
    bundle: ModelBundle, where: str, img_size: int, norm: tuple[Sequence[float], Sequence[float]]
) -> None:
    """A teacher must read the student's input: same size and normalisation (it sees the student's batch)."""
    prep = bundle.preprocessing

    def rounded(values: Sequence[Sequence[float]]) -> list[list[float]]:
        return [[round(float(v), 6) for v in row] for row in values]

    if prep.img_size != img_size or rounded([prep.mean, prep.std]) != rounded(norm):
        raise ConfigError(
            f"{where}: {bundle.source} reads {prep.img_size} px images normalised with mean {list(prep.mean)}, "
            f"std {list(prep.std)}; this run {img_size} px with mean {list(norm[0])}, std {list(norm[1])}. The "
            "teachers see the student's batch, so they must share its input size and normalisation"
        )


def _load_teacher(source: str | Path, where: str) -> ModelBundle:
    """The teacher's bundle; a folder that is not a run or package, or fails its checksums, named by its key."""
    try:
        return load_model(Path(source).expanduser())
    except (DataError, CheckpointError) as exc:
        raise ConfigError(f"{where}: {exc}") from exc


def _teacher_member(bundle: ModelBundle, where: str, fold: int | str) -> Member:
    """The member that teaches ``fold``: the teacher's own fold model, or its final model for ``--fold all``."""
    final = fold == ALL
    members = [m for m in bundle.members if (m.kind == FINAL) == final and (final or m.name == str(fold))]
    if members:
        return members[0]
    have = sorted(m.name for m in bundle.members)
    if final:
        what = "final model"
        fix = "train one with `medsg run CONFIG --fold all` (a package: export it with --models both)"
    else:
        what, fix = f"fold {fold} model", "finish that fold of the teacher's run first (`medsg run` resumes)"
    raise ConfigError(f"{where}: {bundle.source} has no {what} (it has {have}); {fix}, or remove the teacher")


def teacher_members(
    sources: Sequence[str | Path], fold: int | str, test_ids: set[str] | None, class_names: Sequence[str]
) -> list[tuple[ModelBundle, Member]]:
    """Each source's bundle and the member that teaches ``fold`` (its fold model, or its final model for
    ``--fold all``), after the checks that need no model: the same classes, and a fold model tested on exactly
    ``test_ids`` (one tested on other images may have trained on this fold's test images)."""
    found = []
    for i, source in enumerate(sources):
        where = f"train.distill_teachers[{i}]"
        bundle = _load_teacher(source, where)
        if list(bundle.class_names) != list(class_names):
            raise ConfigError(
                f"{where}: {bundle.source} predicts {bundle.class_names}, this run {list(class_names)}; teach "
                "with a model of the same task (same classes, same order)"
            )
        member = _teacher_member(bundle, where, fold)
        if fold != ALL:
            tested = _tested_ids(bundle, member)
            if tested is None or tested != test_ids:
                what = (
                    "no record of its test images"
                    if tested is None
                    else f"{len(tested ^ (test_ids or set()))} images differ"
                )
                raise ConfigError(
                    f"{where}: fold {fold} of {bundle.source} was not tested on this run's fold {fold} test images "
                    f"({what}), so it may have trained on them; teach with runs of the same split file "
                    "(splits.file) and the same data"
                )
        found.append((bundle, member))
    return found


def fold_teachers(
    sources: Sequence[str | Path],
    fold: int | str,
    test_ids: set[str] | None,
    class_names: Sequence[str],
    img_size: int,
    norm: tuple[Sequence[float], Sequence[float]],
    device: torch.device | str = "cpu",
) -> tuple[list[nn.Module], list[dict[str, Any]]]:
    """Each source's model for this fold (``teacher_members``), in eval mode and frozen, and a record of it
    (source, member, SHA-256 of its weights). ``norm`` is the student's (mean, std): the teachers see its batch."""
    teachers, records = [], []
    for i, (bundle, member) in enumerate(teacher_members(sources, fold, test_ids, class_names)):
        _check_input(bundle, f"train.distill_teachers[{i}]", img_size, norm)
        model = bundle.build(member, device)
        for p in model.parameters():
            p.requires_grad_(False)
        teachers.append(model)
        record = {"source": str(sources[i]), "member": member.name}
        records.append(record | {"sha256": [sha256_file(w) for w in member.networks]})
        log.info("fold %s: teacher %d is %s (member %s)", fold, i, bundle.source, member.name)
    return teachers, records


def check_teachers(
    sources: Sequence[str | Path], folds: dict[int | str, set[str] | None], names: Sequence[str]
) -> None:
    """Every fold's teachers checked before the first fold trains (``folds``: fold -> its test ids, None for
    ``--fold all``), so a teacher lacking fold 3 stops a run at once, not after folds 0-2."""
    for fold, test_ids in folds.items():
        teacher_members(sources, fold, test_ids, names)


TEACHERS_FILE = "teachers.json"  # fold_K/: which weights taught the fold


class DistillTrainer(FoldTrainer):
    """``FoldTrainer`` whose loss mixes the recipe's loss with the KL to the fold's teachers' soft predictions."""

    uses_teachers = True
    teachers: list[nn.Module]
    teacher_records: list[dict[str, Any]]

    def build_criterion(self) -> nn.Module:
        """The recipe's criterion; the teachers are loaded here, the first hook that knows the fold's data, and
        recorded in ``fold_K/teachers.json`` (and in every checkpoint, so a resume refuses changed teachers)."""
        import timm

        rows = self.data.test_rows
        test_ids = None if self.fold == ALL or rows is None else {str(i) for i in rows.index}
        data_cfg = timm.data.resolve_data_config(
            {}, model=self.model
        )  # what the fold's pipelines normalise with
        self.teachers, self.teacher_records = fold_teachers(
            self.cfg.train.distill_teachers,
            self.fold,
            test_ids,
            self.data.class_names,
            self.cfg.model.img_size,
            (data_cfg["mean"], data_cfg["std"]),
            self.device,
        )
        recorded = self.folder.file(TEACHERS_FILE)
        if self.dist.is_main and not (recorded.is_file() and self.last_path.exists()):
            # a fold that will resume keeps its record: load_extra_state compares against the teachers it names
            t = self.cfg.train
            record = {
                "teachers": self.teacher_records,
                "weight": t.distill_weight,
                "temperature": t.distill_temperature,
            }
            atomic_write_text(recorded, json.dumps(record, indent=2) + "\n")
        return super().build_criterion()

    def batch_loss(self, images: torch.Tensor, labels: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        t = self.cfg.train
        with autocast(self.device, self.amp_dtype):
            logits = self.train_model(images)
            soft = teacher_probabilities(self.teachers, images, t.distill_temperature)
        hard = compute_loss(self.criterion, logits.float(), labels)
        soft_loss = distill_loss(logits, soft, t.distill_temperature)
        return (1 - t.distill_weight) * hard + t.distill_weight * soft_loss

    def extra_state(self) -> dict[str, Any]:
        return {"teachers": self.teacher_records}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        """Resume only under the teachers the fold started with: other weights would teach other targets."""
        saved = [r.get("sha256") for r in state.get("teachers") or []]
        now = [r["sha256"] for r in self.teacher_records]
        if saved != now:
            changed = [i for i in range(max(len(saved), len(now))) if saved[i : i + 1] != now[i : i + 1]]
            raise ConfigError(
                f"fold {self.fold}: the weights of train.distill_teachers {changed} differ from those the fold "
                f"started with (SHA-256 in {self.folder.file(TEACHERS_FILE)}); restore those teachers, or delete "
                f"{self.folder.path} to train the fold again"
            )
