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
    arch: str = "mlp",
    hidden: list[int] | None = None,
    head_hidden: list[int] | None = None,
    activation: str = "relu",
    dropout: float = 0.0,
    batch_norm: bool = False,
    role: str = "teacher",
    config=None,
    quiet: bool = False,
):
    """Train a unimodal (one input) or late-fusion (several inputs) model on ``data`` (a TensorData).

    Inputs are standardised with train-split statistics, stored in the model. Returns (model, FitResult)
    with the selected (best-on-val or last) weights loaded.
    """
    from cmkdtool.engine.loop import TrainConfig, fit, seed_everything
    from cmkdtool.nn.models import build_model

    cfg = config or TrainConfig()
    spec = {
        "role": role,
        "arch": arch,
        "inputs": [{"name": n, "shape": list(data.shapes[n])} for n in data.inputs],
        "hidden": list(hidden or []),
        "head_hidden": list(head_hidden or []),
        "activation": activation,
        "dropout": dropout,
        "batch_norm": batch_norm,
        "num_classes": data.num_classes,
        "task": data.task,
        "class_names": data.class_names,
    }
    seed_everything(cfg.seed)
    model = build_model(spec)
    train_idx = data.index("train")
    for n in model.input_names:
        model.norm[n].fit(data.inputs[n][train_idx].flatten(1))
    result = fit(Supervised(model, data.task), data, cfg, quiet=quiet, desc="pretrain")
    model.load_state_dict(result.state_dict)
    return model.eval(), result
