"""Evaluation passes: class probabilities of a whole dataset, and the cheap per-epoch validation metrics."""

from __future__ import annotations

import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

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
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """(ids, y_true, probabilities) of a whole dataset, in dataset order."""
    model.eval()
    ids: list[str] = []
    ys, probs = [], []
    for batch in make_loader(dataset, batch_size, workers, seed=0):
        images, labels = to_device(batch, device)
        with autocast(device, dtype):
            logits = model(images)
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        ys.append(labels.cpu())
        ids.extend(str(i) for i in batch["id"])
    out = torch.cat(probs).numpy().astype(np.float64)
    return ids, torch.cat(ys).numpy(), out / out.sum(axis=1, keepdims=True)


def val_metrics(y: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """Loss, accuracy, balanced accuracy and macro AUROC for the per-epoch history (cheap, no bootstrap)."""
    num_classes = probs.shape[1]
    pred = probs.argmax(1)
    with warnings.catch_warnings():  # tiny inner splits may miss a class; the NaN/partial value is recorded
        warnings.simplefilter("ignore")
        return _val_metrics(y, probs, pred, num_classes)


def _val_metrics(y: np.ndarray, probs: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[str, float]:
    from sklearn.metrics import balanced_accuracy_score, roc_auc_score

    loss = float(F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-12)), torch.from_numpy(y)).item())
    try:
        if num_classes == 2:
            auroc = float(roc_auc_score(y, probs[:, 1]))
        else:
            auroc = float(
                roc_auc_score(y, probs, multi_class="ovr", average="macro", labels=range(num_classes))
            )
    except ValueError:  # a class is absent from this small split
        auroc = float("nan")
    return {
        "val_loss": loss,
        "val_accuracy": float((pred == y).mean()),
        "val_balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        "val_macro_auroc": auroc,
    }
