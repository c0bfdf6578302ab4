"""Losses of the cross-modal information bottleneck (CIBA Eq. 7, Algorithm 1) and of its VQ-VAE variant.

Pure functions of tensors; every one is a per-sample sum over dimensions averaged over the batch (Algorithm 1
sums over samples; dividing by the batch size keeps the learning rate independent of it, as `feature_mse`).
Results are float32 (float64 stays float64).
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["cross_generation", "gaussian_kl", "reparameterize", "vq_losses"]


def _f(x: Tensor) -> Tensor:
    return x if x.dtype == torch.float64 else x.float()


def cross_generation(decoded: Tensor, target: Tensor) -> Tensor:
    """``(1/B) sum_i ||z_hat_i - z_i||_2^2``: Algorithm 1 line 8 (the first term of Eq. 7 for a Gaussian decoder).

    ``decoded`` comes from the teacher's feature through the bottleneck; ``target`` is the student's feature.
    """
    if decoded.shape != target.shape:
        raise ValueError(f"decoded {tuple(decoded.shape)} and target {tuple(target.shape)} differ in shape")
    return (_f(decoded) - _f(target)).square().flatten(1).sum(1).mean()


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """``KL(N(mean, diag(exp(logvar))) || N(0, I))`` per sample, averaged over the batch (Algorithm 1 line 9):

    ``-1/2 * sum_h (1 + logvar_h - mean_h^2 - exp(logvar_h))``.
    """
    if mean.shape != logvar.shape:
        raise ValueError(f"mean {tuple(mean.shape)} and logvar {tuple(logvar.shape)} differ in shape")
    m, lv = _f(mean), _f(logvar)
    return (-0.5 * (1.0 + lv - m.square() - lv.exp())).flatten(1).sum(1).mean()


def reparameterize(mean: Tensor, logvar: Tensor, noise: Tensor | None = None) -> Tensor:
    """``h = mean + exp(logvar / 2) * eps`` with ``eps ~ N(0, I)`` (Kingma & Welling 2013): differentiable in
    both ``mean`` and ``logvar``. ``noise`` fixes eps (tests)."""
    eps = torch.randn_like(mean) if noise is None else noise
    return mean + (0.5 * logvar).exp() * eps


def vq_losses(encoded: Tensor, code: Tensor, beta: float = 0.25) -> tuple[Tensor, Tensor]:
    """VQ-VAE codebook and commitment losses (van den Oord et al. 2017, Eq. 3), per sample summed, batch mean:

    ``codebook = ||sg(z_e) - e||^2`` (moves the codes), ``commit = beta * ||z_e - sg(e)||^2`` (moves the
    encoder). ``code`` is the nearest codebook vector ``e`` of each ``encoded`` ``z_e``.
    """
    if encoded.shape != code.shape:
        raise ValueError(f"encoded {tuple(encoded.shape)} and code {tuple(code.shape)} differ in shape")
    ze, e = _f(encoded), _f(code)
    codebook = (ze.detach() - e).square().flatten(1).sum(1).mean()
    commit = beta * (ze - e.detach()).square().flatten(1).sum(1).mean()
    return codebook, commit
