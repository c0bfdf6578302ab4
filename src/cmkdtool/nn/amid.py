"""AMID's training-only networks (spec section 1.2, choice A4): the teacher fusion F and the two discriminators.

The paper gives "a 2-layer MLP" for F and "5-layer" / "3-layer" MLPs for D1 / D2 with Leaky ReLU everywhere;
widths and slopes are cmkdtool's choices (hidden width = the representation width; slope 0.2 in the
discriminators, the DCGAN convention, and PyTorch's 0.01 in F).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["Discriminator", "Fusion"]


class Fusion(nn.Module):
    """F: ``Linear(d_s + d_a, d) -> LeakyReLU -> Linear(d, d) -> LeakyReLU`` over ``[S, A]`` (the trailing
    activation keeps M in the range of the student's post-activation embedding, which the shared head reads)."""

    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, dim), nn.LeakyReLU(), nn.Linear(dim, dim), nn.LeakyReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class Discriminator(nn.Module):
    """``layers`` linear layers: ``Linear -> LeakyReLU(0.2)`` (``layers - 1`` times, width ``hidden``) then
    ``Linear(hidden, 1)``; returns the logit per row, shape (B,). AMID: D1 has 5 layers, D2 3."""

    def __init__(self, dim: int, hidden: int, layers: int):
        super().__init__()
        mods: list[nn.Module] = []
        width = dim
        for _ in range(layers - 1):
            mods += [nn.Linear(width, hidden), nn.LeakyReLU(0.2)]
            width = hidden
        mods.append(nn.Linear(width, 1))
        self.net = nn.Sequential(*mods)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x).squeeze(1)
