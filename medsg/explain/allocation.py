"""Token allocation: how finely each guided block merged the tokens of every region into keys and values.

A guided block sorts its tokens by the significance map of the hybrid block before it and merges runs of
consecutive sorted tokens with one linear layer per level: in stages 1 and 2 the least significant quarter is
merged coarsely, the middle half at a medium rate and the most significant quarter finely (stage 1: 196, 56 and
28 tokens per key; stage 2: 49, 14 and 7); in stage 3 the lower half is merged in pairs and the upper half kept
token by token. This module replays that rule on a recorded significance map.

It is derived from the significance ranking, so it adds no independent evidence about where the lesion is; it
shows where SG-Former chose to spend its tokens, which no other architecture can show.

Levels are numbered from fine (0) to coarse; ``tokens_per_key`` gives the merge rate of each level.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from medsg.explain.significance import find_sgformer

__all__ = ["AllocationRule", "allocation_rules", "token_allocation", "LEVEL_NAMES"]

LEVEL_NAMES = {2: ("fine", "coarse"), 3: ("fine", "medium", "coarse")}


@dataclass(frozen=True)
class AllocationRule:
    """One guided block's merge rule: the share of sorted tokens per level and tokens merged per key.

    Both tuples run from the least significant tokens (first in the sort) to the most significant.
    """

    fractions: tuple[float, ...]
    tokens_per_key: tuple[int, ...]

    @property
    def level_names(self) -> tuple[str, ...]:
        """Names of levels 0 (fine) .. last (coarse)."""
        return LEVEL_NAMES[len(self.fractions)]

    def tokens_at(self, level: int) -> int:
        """Tokens merged into one key at ``level`` (0 = fine)."""
        return self.tokens_per_key[len(self.tokens_per_key) - 1 - level]


def allocation_rules(model: nn.Module) -> list[AllocationRule]:
    """The rules of the guided blocks in forward order; the k-th consumes the k-th recorded significance map."""
    backbone = find_sgformer(model)
    if backbone is None:
        raise TypeError(f"{type(model).__name__} contains no SG-Former backbone: it allocates no tokens.")
    rules = []
    for module in backbone.modules():
        splits = getattr(module, "splits", None)
        if splits is None:
            continue
        layers = list(module.groupers)
        rules.append(AllocationRule(tuple(splits), tuple(int(layer.in_features) for layer in layers)))
    return rules


def token_allocation(significance: torch.Tensor, rule: AllocationRule) -> torch.Tensor:
    """(B, h, w) significance -> (B, h, w) int64 level per token: 0 is the finest, the last level the coarsest.

    Tokens are ranked as the guided block ranks them (row-major sort, ascending significance); the
    block's column-major half sorts the same values, so it assigns the same levels up to exact ties.
    """
    b, h, w = significance.shape
    n = h * w
    order = torch.sort(significance.reshape(b, n), dim=1)[1]
    levels_sorted = torch.empty(n, dtype=torch.int64)
    start, n_levels = 0, len(rule.fractions)
    for k, frac in enumerate(rule.fractions):  # k = 0 is the least significant (coarsest) run
        size = int(n * frac)
        levels_sorted[start : start + size] = n_levels - 1 - k
        start += size
    levels_sorted[start:] = 0  # nothing is left over for valid sizes; finest if it ever were
    levels = torch.empty(b, n, dtype=torch.int64)
    levels.scatter_(1, order.cpu(), levels_sorted.expand(b, n).contiguous())
    return levels.view(b, h, w)
