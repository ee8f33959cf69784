"""``medsg info``: the registered SG-Former variants with a forward pass each, a smoke test of the install."""

from __future__ import annotations

import argparse

import timm
import torch

import medsg

NAME = "info"
HELP = "registered SG-Former variants, parameter counts and a forward pass (smoke test)"
INFO_VARIANTS = ("sgformer_tiny", "sgformer_xs", "sgformer_s", "sgformer_m", "sgformer_b")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """No arguments."""


def run(args: argparse.Namespace) -> int:
    """Print each variant's parameter count and the output shape of one 224 px forward pass."""
    print(f"medsg {medsg.__version__}, torch {torch.__version__}, timm {timm.__version__}")
    for name in INFO_VARIANTS:
        if name not in timm.list_models(name):
            print(f"{name:15s} not registered")
            continue
        model = timm.create_model(name, num_classes=3, pretrained=False).eval()
        params = sum(p.numel() for p in model.parameters()) / 1e6
        with torch.no_grad():
            shape = tuple(model(torch.zeros(1, 3, 224, 224)).shape)
        print(f"{name:15s} {params:7.2f} M params   forward (1,3,224,224) -> {shape}")
    return 0
