"""Explanations for SG-Former predictions."""

from medsg.explain.significance import significance_maps

__all__ = ["significance_maps"]
