"""Training with an auxiliary lesion-mask loss: the masks BUSI ships are training-only knowledge of where the
lesion is, and a small model trained from scratch on a few hundred images can use that hint.

``train.mask_loss_weight: w`` (> 0) selects ``MaskAuxTrainer``. A 1x1 convolution reads the backbone's
stride-16 feature map (stage 3 of SG-Former, 14 x 14 at 224 px) and predicts, per cell, the fraction of it the
lesion covers (the mask area-pooled to that grid); the loss is the classification loss plus ``w`` times the
binary cross-entropy of that prediction. An image without a lesion (BUSI's "normal") teaches an empty map.

The head lives beside the model, never inside it: it is trained, checkpointed and resumed with the fold, and
dropped at export, so the predicting model, its checkpoints' ``state_dict`` and the package are unchanged.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from medsg.core.errors import ConfigError
from medsg.train.fold import FoldTrainer, compute_loss
from medsg.train.loader import plain_tensor
from medsg.train.utils import autocast

MASK_REDUCTION = 16  # the stride of the feature map the head reads


def mask_feature_module(model: nn.Module, reduction: int = MASK_REDUCTION) -> tuple[str, int]:
    """(module name, channels) of the deepest stage at stride ≤ ``reduction``, from timm's ``feature_info``."""
    info = getattr(model, "feature_info", None)
    stages = [f for f in (info or []) if isinstance(f, dict) and f.get("reduction", 0) <= reduction]
    if not stages:
        raise ConfigError(
            f"train.mask_loss_weight: {type(model).__name__} has no feature_info stage at stride <= "
            f"{reduction}; use a timm model with feature_info (SG-Former, PVT, ConvNeXt ...) or set it to 0"
        )
    deepest = max(enumerate(stages), key=lambda item: (item[1]["reduction"], item[0]))[1]
    return str(deepest["module"]), int(deepest["num_chs"])


def mask_loss(mask_logits: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
    """BCE between per-cell logits (B, 1, h, w) and the lesion fraction of each cell of ``masks`` (B, 1, H, W)."""
    target = F.adaptive_avg_pool2d(masks.float(), mask_logits.shape[-2:])
    return F.binary_cross_entropy_with_logits(mask_logits.float(), target)


class MaskAuxTrainer(FoldTrainer):
    """``FoldTrainer`` whose loss adds ``train.mask_loss_weight`` x the lesion-mask loss of a 1x1 head."""

    uses_masks = True

    def build_optimizer(self) -> torch.optim.Optimizer:
        """The backbone's optimizer, plus the mask head as a group of its own (full lr, no weight decay).

        The head is made here: this is the first hook after the model is on its device, and the optimizer
        must hold the head's parameters from the start."""
        name, channels = mask_feature_module(self.model)
        self.mask_head = nn.Conv2d(channels, 1, kernel_size=1).to(self.device)
        self.train_mask_head: nn.Module = self.mask_head
        if self.dist.enabled:  # its gradients are averaged across ranks like the model's
            ids = [self.device.index] if self.device.type == "cuda" else None
            self.train_mask_head = nn.parallel.DistributedDataParallel(self.mask_head, device_ids=ids)
        self._features: torch.Tensor | None = None
        self.model.get_submodule(name).register_forward_hook(self._keep_features)
        optimizer = super().build_optimizer()
        optimizer.add_param_group({"params": list(self.mask_head.parameters()), "weight_decay": 0.0})
        return optimizer

    def _keep_features(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        if not module.training:  # evaluation never holds the map
            return
        if not (isinstance(output, torch.Tensor) and output.dim() == 4):
            raise ConfigError(
                f"train.mask_loss_weight: {type(module).__name__} gives no (B, C, H, W) feature map (a "
                "token sequence?); use a hierarchical model (SG-Former, PVT, ConvNeXt ...) or set it to 0"
            )
        self._features = output

    def batch_loss(self, images: torch.Tensor, labels: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        if "mask" not in batch:
            raise ConfigError(
                "train.mask_loss_weight: the training batches carry no 'mask'; the data adapter must give "
                "mask_paths (BUSI does), or set train.mask_loss_weight: 0"
            )
        masks = plain_tensor(batch["mask"]).to(self.device, non_blocking=True)
        with autocast(self.device, self.amp_dtype):
            logits = self.train_model(images)
            features, self._features = self._features, None
            mask_logits = self.train_mask_head(features)
        loss = compute_loss(self.criterion, logits.float(), labels)
        return loss + self.cfg.train.mask_loss_weight * mask_loss(mask_logits, masks)

    def extra_state(self) -> dict[str, Any]:
        return {"mask_head": self.mask_head.state_dict()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        if "mask_head" not in state:
            raise ConfigError(
                "train.mask_loss_weight: the checkpoint to resume has no mask head (it was trained without "
                "the mask loss); resume with the config it was made with"
            )
        self.mask_head.load_state_dict(state["mask_head"])
