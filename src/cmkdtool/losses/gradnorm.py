"""GradNorm (Chen, Badrinarayanan, Lee, Rabinovich, ICML 2018) for the auxiliary-loss weights of OS-MD (Eq. 9),
as pure functions of tensors. OS-MD states only the goal (the auxiliary losses "maintained at the same magnitude
while being an order of magnitude smaller than L_TTL"); the rest is the spec's choice O9
(``shared/specs/amid-osmd.md`` section 2.3): the closed-form gradient of GradNorm's L1 objective, an Adam step on
the weights, a floor and a renormalisation to a fixed sum.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["adam_update", "gradnorm_weight_grad", "renormalise"]


def gradnorm_weight_grad(weights: Tensor, grad_norms: Tensor, losses: Tensor, initial: Tensor, alpha: float) -> Tensor:
    r"""d L_grad / d w of GradNorm's objective, in closed form.

    With :math:`G_i = w_i g_i` (``grad_norms`` :math:`g_i = \lVert \partial L_i / \partial W\rVert_2` at the shared
    layer W), :math:`\bar G = \mathrm{mean}_i G_i`, the inverse training rates :math:`\tilde L_i = L_i / L_i(0)`,
    :math:`r_i = \tilde L_i / \mathrm{mean}_j \tilde L_j` and the constant targets
    :math:`t_i = \mathrm{sg}(\bar G r_i^\alpha)`:

    .. math::
        L_{grad} = \sum_i |G_i - t_i|,\qquad \frac{\partial L_{grad}}{\partial w_i} = \mathrm{sign}(G_i - t_i)\, g_i

    All arguments are (T,) tensors (T tasks); the result is (T,).
    """
    g = grad_norms.detach()
    big_g = weights.detach() * g
    rate = losses.detach() / initial.detach()
    target = big_g.mean() * (rate / rate.mean()) ** alpha
    return torch.sign(big_g - target) * g


def adam_update(
    param: Tensor, grad: Tensor, m: Tensor, v: Tensor, step: Tensor, lr: float,
    betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
) -> None:  # fmt: skip
    """One Adam step (Kingma and Ba 2015, bias-corrected, as ``torch.optim.Adam``) on ``param`` in place, with its
    moments ``m``, ``v`` and the step count ``step`` (a 0-d tensor) updated in place: the state lives in the
    caller's buffers, so a training state saves and restores it."""
    b1, b2 = betas
    step.add_(1)
    m.mul_(b1).add_(grad, alpha=1 - b1)
    v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
    t = step.double()  # bias corrections in float64, as torch.optim.Adam computes them
    m_hat = m / (1 - b1**t).to(m.dtype)
    v_hat = v / (1 - b2**t).to(v.dtype)
    param.sub_(lr * m_hat / (v_hat.sqrt() + eps))


def renormalise(weights: Tensor, total: float, floor: float = 1e-6) -> Tensor:
    """Clamp each weight at ``floor`` and rescale so that they sum to ``total`` (GradNorm renormalises to the number
    of tasks; OS-MD's "an order of magnitude below the task loss" reads as a sum of 0.2 for two weights)."""
    w = weights.clamp(min=floor)
    return w * (total / w.sum())
