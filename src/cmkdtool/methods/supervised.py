"""Supervised training of one model on its labels: what ``cmkdtool pretrain`` runs."""

from __future__ import annotations

from torch import Tensor, nn

from cmkdtool.engine.loop import Batch, Method, task_loss


class Supervised(Method):
    """Cross-entropy (multi-class) or binary cross-entropy (multi-label) on the model's logits."""

    name = "supervised"

    def __init__(self, model: nn.Module, task: str) -> None:
        super().__init__()
        self.student = model
        self.task = task

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        term = "bce" if self.task == "multilabel" else "ce"
        return {term: task_loss(self.student(batch.inputs), batch.target, self.task)}


def pretrain(
    data,
    *,
    model=None,
    role: str = "teacher",
    config=None,
    mask=None,
    quiet: bool = False,
    state_file: str | None = None,
    resume: bool = False,
    on_epoch_end=None,
):
    """Train a unimodal (one input) or late-fusion (several inputs) model on ``data`` (a TensorData).

    ``model`` is a ``ModelOptions``. Inputs are standardised with train-split statistics, stored in the model.
    ``mask`` (a ``MaskOptions``) trains it with those channels nullified; the mask is part of the model.
    Returns (model, FitResult) with the selected (best-on-val or last) weights loaded.
    """
    from cmkdtool.data.masks import apply_mask, fit_mask_fill
    from cmkdtool.engine.config import ModelOptions, TrainConfig
    from cmkdtool.engine.loop import fit, seed_everything
    from cmkdtool.nn.models import new_model

    cfg = config or TrainConfig()
    seed_everything(cfg.seed)
    net = new_model(data, model or ModelOptions(), role)
    if mask is not None:
        apply_mask(net, mask, cfg.seed, data)
    result = fit(
        Supervised(net, data.task),
        data,
        cfg,
        quiet=quiet,
        desc="pretrain",
        state_file=state_file,
        resume=resume,
        on_epoch_end=on_epoch_end,
    )
    net.load_state_dict(result.state_dict)
    fit_mask_fill(net, data)  # a mean-filled hidden layer: the exact train mean of the final weights
    return net.eval(), result
