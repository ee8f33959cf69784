"""Evaluation passes: class probabilities of a whole dataset, and the cheap per-epoch validation metrics."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from medsg.data.transforms import flip_views
from medsg.metrics import classification_metrics
from medsg.train.loader import make_loader, to_device
from medsg.train.utils import autocast


@torch.no_grad()
def predict(
    model: nn.Module,
    dataset: Dataset,
    device: torch.device,
    batch_size: int,
    workers: int,
    dtype: torch.dtype | None = None,
    tta: bool = False,
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, y_true, probabilities) of a whole dataset, in dataset order; with ``tta`` each image's
    probabilities are the mean of the softmax over it and its horizontal flip (``eval.tta``)."""
    model.eval()
    ids: list[str] = []
    ys, probs = [], []
    for batch in make_loader(dataset, batch_size, workers, seed=0):
        images, labels = to_device(batch, device)
        views = flip_views(images, tta)
        with autocast(device, dtype):
            logits = [model(v) for v in views]
        per_view = [torch.softmax(x.float(), dim=1).cpu().double() for x in logits]
        probs.append(torch.stack(per_view).mean(dim=0))
        ys.append(labels.cpu())
        ids.extend(str(i) for i in batch["id"])
    out = torch.cat(probs).numpy().astype(np.float64)
    return ids, torch.cat(ys).numpy(), out / out.sum(axis=1, keepdims=True)


def val_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Loss, accuracy, balanced accuracy and macro AUROC for the per-epoch history and the selection rule.

    The scores are ``medsg.metrics.classification_metrics``'s, the one implementation the reports use (a class
    absent from a small inner split is left out of the macro AUROC, as there). ``val_loss`` is the selection
    tie-break: the mean negative log probability of the true class, computed as every earlier run did, so
    selection and history stay bit-identical.
    """
    scores = classification_metrics(y, probs, [str(c) for c in range(probs.shape[1])])
    loss = float(F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-12)), torch.from_numpy(y)).item())
    auroc = scores["macro_auroc"]
    return {
        "val_loss": loss,
        "val_accuracy": scores["accuracy"],
        "val_balanced_accuracy": scores["balanced_accuracy"],
        "val_macro_auroc": float("nan") if auroc is None else auroc,
    }
