"""Output-alignment distances between two networks' logits (MFH Eq. 28 ``Dist``, Algorithm 1 step 6).

``Dist(f1(X^a), f2(X^b))`` in the MFH paper (App. B.4) is "a distance loss (e.g., mean squared error)"; the
authors' code uses ``torch.nn.MSELoss()``, the mean over every element (rows and classes). The same reduction is
used here, with L1 as the alternative. ``POINTWISE`` gives the elementwise term, so that a caller that
accumulates over row chunks (the permutation salience) reduces exactly as ``logit_distance`` does.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

__all__ = ["DISTANCES", "POINTWISE", "logit_distance"]

POINTWISE: dict[str, Callable[[Tensor], Tensor]] = {
    "mse": lambda d: d.square(),
    "l1": lambda d: d.abs(),
}
DISTANCES = tuple(POINTWISE)


def logit_distance(a: Tensor, b: Tensor, kind: str = "mse") -> Tensor:
    """Mean over all elements of ``(a - b)^2`` (``kind='mse'``, as ``nn.MSELoss``) or ``|a - b|`` (``'l1'``).

    Args:
        a, b: tensors of one shape, e.g. (N, C) logits of two networks.
        kind: 'mse' or 'l1'.

    Returns:
        A scalar tensor, float32 (float64 for float64 inputs).

    Raises:
        ValueError: on a shape mismatch, an empty input or an unknown ``kind``.
    """
    if kind not in POINTWISE:
        raise ValueError(f"unknown distance {kind!r}; choose one of {', '.join(DISTANCES)}")
    if a.shape != b.shape:
        raise ValueError(f"outputs {tuple(a.shape)} and {tuple(b.shape)} differ in shape")
    if a.numel() == 0:
        raise ValueError("the distance of empty outputs is undefined")
    d = a - b
    return POINTWISE[kind](d if d.dtype == torch.float64 else d.float()).mean()
