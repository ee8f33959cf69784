"""Explanations for SG-Former predictions."""

from medsg.explain.significance import find_sgformer, significance_maps

__all__ = ["find_sgformer", "significance_maps"]
