"""The one training loop every command runs on.

A *method* (pretraining, or a distillation method) owns its modules and returns its loss as named terms from
``training_step(batch)``; the engine weights and sums them, steps the optimizer and schedule, evaluates the
deployable model on the val split each epoch, keeps the best (or last) weights, logs every term to the history
and shows progress on stderr. Data stays on the device: batches are index slices of tensors already there,
and loss values are accumulated on the device and read back once per epoch (no per-step host sync).
"""

from __future__ import annotations

import copy
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine.config import TrainConfig
from cmkdtool.engine.device import autocast
from cmkdtool.errors import CmkdError

STATE_INTERVAL_S = 10.0  # at most one training-state save per this many seconds (plus the first and last epoch)


class LazyRows(Mapping):
    """The rows ``index`` of each column, gathered on first access: a batch never copies columns that the
    step does not read (e.g. a teacher's input when its outputs are cached)."""

    __slots__ = ("_columns", "_index", "_rows")

    def __init__(self, columns: dict[str, Tensor], index: Tensor) -> None:
        self._columns, self._index, self._rows = columns, index, {}

    def __getitem__(self, key: str) -> Tensor:
        rows = self._rows.get(key)
        if rows is None:
            rows = self._rows[key] = self._columns[key][self._index]
        return rows

    def __iter__(self):
        return iter(self._columns)

    def __len__(self) -> int:
        return len(self._columns)


@dataclass
class Batch:
    """One training batch: inputs and targets sliced on the device, and the row indices they came from."""

    inputs: Mapping[str, Tensor]
    target: Tensor | None
    index: Tensor


class Method(nn.Module):
    """Base class of everything the engine trains.

    Subclasses set ``self.student`` (the deployable model, an ``nn.Module`` taking a dict of input tensors and
    returning logits) and implement ``training_step``. ``loss_weights`` maps term names to weights (a term
    not listed has weight 1). Frozen modules (teachers) should be excluded from ``trainable_parameters``.
    """

    name = "method"

    def __init__(self) -> None:
        super().__init__()
        self.loss_weights: dict[str, float] = {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Parameters the engine's optimizer updates (default: every one with requires_grad, minus those that
        ``param_groups`` or an own optimizer of the method claims)."""
        own = {id(p) for p in self.own_optimizer_parameters()}
        return [p for p in self.parameters() if p.requires_grad and id(p) not in own]

    def param_groups(self) -> list[dict]:
        """Optimizer parameter groups. Default: one group of ``trainable_parameters``. A method may return
        several, each a dict with ``params`` and optionally ``lr_scale`` (multiplies --lr) and
        ``weight_decay``; all follow the schedule."""
        return [{"params": self.trainable_parameters()}]

    def own_optimizer_parameters(self) -> list[nn.Parameter]:
        """Parameters the method updates itself in ``after_step`` (discriminators, GradNorm weights)."""
        return []

    def after_step(self, batch: Batch, terms: dict[str, Tensor], step: int) -> None:
        """Called after every optimizer step: extra updates with the method's own optimizers (adversarial
        discriminators, GradNorm loss weights). ``terms`` are this step's (detached) loss terms."""

    def setup(self, data: TensorData) -> None:
        """Called once before training (e.g. to cache frozen-teacher outputs on the device)."""

    def on_epoch_start(self, epoch: int) -> None:
        """Called at the start of each epoch (dynamic weights, warm-up)."""

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        raise NotImplementedError

    def train(self, mode: bool = True):  # frozen submodules stay in eval mode
        super().train(mode)
        for m in self.frozen_modules():
            m.eval()
        return self

    def frozen_modules(self) -> list[nn.Module]:
        return []

    def validate(self, data: TensorData, index: Tensor, precision: str, batch_size: int) -> dict[str, float]:
        """Validation metrics of the deployable model on rows ``index``; must include ``loss`` (tie-breaker) and
        the ``selection`` key. Default: the task loss and accuracy (mAP for multi-label) of ``student``."""
        return val_metrics(self.student, data, index, precision, batch_size)

    def selection(self, task: str | None) -> tuple[str, bool]:
        """The validation metric that picks the best epoch, and whether higher is better."""
        return selection_key(task), True


@dataclass
class FitResult:
    state_dict: dict[str, Tensor]
    best_epoch: int
    history: list[dict]
    final_metrics: dict[str, float]
    best_metrics: dict[str, float]


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def make_optimizer(groups: list[dict], cfg: TrainConfig) -> torch.optim.Optimizer:
    """SGD or AdamW over parameter groups; a group's ``lr_scale`` multiplies the base rate."""
    params = [
        {k: v for k, v in {**g, "lr": cfg.lr * g.get("lr_scale", 1.0)}.items() if k != "lr_scale"} for g in groups
    ]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(
            params,
            lr=cfg.lr,
            momentum=cfg.momentum,
            nesterov=cfg.nesterov and cfg.momentum > 0,
            weight_decay=cfg.weight_decay,
        )
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def lr_factor(cfg: TrainConfig, steps_per_epoch: int) -> Callable[[int], float]:
    """Multiplier of the base learning rate at optimizer step ``step`` (linear warm-up, then the schedule)."""
    total = cfg.epochs * steps_per_epoch
    warm = cfg.warmup_epochs * steps_per_epoch
    milestones = sorted(int(m) for m in cfg.milestones)

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        if cfg.schedule == "step":
            epoch = step // steps_per_epoch
            return cfg.gamma ** sum(epoch >= m for m in milestones)
        if cfg.schedule == "cosine":
            t = (step - warm) / max(1, total - warm)
            return 0.5 * (1.0 + math.cos(math.pi * min(1.0, t)))
        return 1.0

    return factor


@torch.no_grad()
def predict(
    model: nn.Module,
    data: TensorData,
    index: Tensor,
    *,
    precision: str = "fp32",
    batch_size: int = 8192,
    embeddings: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Logits (float32) and optionally embeddings of rows ``index``, in eval mode, chunked."""
    was_training = model.training
    model.eval()
    logits, embs = [], []
    for start in range(0, len(index), batch_size):
        idx = index[start : start + batch_size]
        x = LazyRows(data.inputs, idx)  # gathers only the columns the model reads
        with autocast(precision, data.device):
            if embeddings:
                e = model.embed(x)
                out = model.head(e)
                embs.append(e.float())
            else:
                out = model(x)
        logits.append(out.float())
    model.train(was_training)
    n_out = getattr(model, "spec", {}).get("num_classes", 0)
    empty = torch.zeros(0, n_out, device=data.device)
    lg = torch.cat(logits) if logits else empty
    em = (torch.cat(embs) if embs else torch.zeros(0, 0, device=data.device)) if embeddings else None
    return lg, em


@torch.no_grad()
def predict_layers(
    model: nn.Module, data: TensorData, index: Tensor, layers: list[str], *, batch_size: int = 8192
) -> dict[str, Tensor]:
    """Float32 outputs of the named ``layers`` (``CmkdModel.layer_names``) on rows ``index``, in eval mode, chunked,
    on ``data``'s device. Raises ``CmkdError`` for an unknown layer; no rows give ``(0, width)`` tensors."""
    was_training = model.training
    model.eval()
    parts: dict[str, list[Tensor]] = {n: [] for n in layers}
    try:
        for start in range(0, len(index), batch_size):
            _, out = model.forward_layers(LazyRows(data.inputs, index[start : start + batch_size]), layers)
            for n in layers:
                parts[n].append(out[n].float())
    finally:
        model.train(was_training)
    return {
        n: torch.cat(v) if v else torch.zeros(0, model.layer_width(n), device=data.device) for n, v in parts.items()
    }


def task_loss(logits: Tensor, target: Tensor, task: str) -> Tensor:
    """Cross-entropy for multi-class targets, binary cross-entropy with logits for multi-hot targets."""
    if task == "multilabel":
        return nn.functional.binary_cross_entropy_with_logits(logits, target)
    return nn.functional.cross_entropy(logits, target)


def val_metrics(model: nn.Module, data: TensorData, index: Tensor, precision: str, batch_size: int) -> dict:
    """Loss and the selection metric (accuracy, or mAP for multi-label) on rows ``index``."""
    logits, _ = predict(model, data, index, precision=precision, batch_size=batch_size)
    target = data.target[index]
    out = {"loss": task_loss(logits, target, data.task)}
    if data.task == "multilabel":
        from cmkdtool.analysis.metrics import multilabel_metrics

        out["map"] = multilabel_metrics(target.cpu().numpy(), logits.cpu().numpy())["map"]
    else:
        out["accuracy"] = (logits.argmax(1) == target).float().mean()
    return {k: float(v) for k, v in out.items()}


def selection_key(task: str | None) -> str:
    return "map" if task == "multilabel" else "accuracy"


def fit(
    method: Method,
    data: TensorData,
    cfg: TrainConfig,
    *,
    quiet: bool = False,
    desc: str = "train",
    state_file: str | None = None,
    resume: bool = False,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> FitResult:
    """Train ``method`` on the train split of ``data``; select on the val split; return the student's weights.

    With ``state_file`` the full training state is saved there after the first and the last epoch and after an
    epoch that ends ``STATE_INTERVAL_S`` seconds or more after the previous save (a save per epoch would dominate
    runs of many tiny epochs); ``resume`` continues from it, reaching the same weights as an uninterrupted run
    (bit-identical on the CPU).
    """
    from cmkdtool.engine import state as st

    cfg.validate()
    device = data.device
    method.to(device)
    student = method.student
    train_idx = data.index("train")
    val_idx = data.index("val")
    n_train = len(train_idx)
    if n_train == 0:
        raise CmkdError(f"{data.source}: the train split is empty; add a 'split' column or change --split-ratio")
    select = cfg.select
    if select == "best" and len(val_idx) == 0:
        select = "last"
        if not quiet:
            print(f"note: {data.source} has no val rows; keeping the last epoch's weights", file=sys.stderr)
    bs = n_train if cfg.batch_size is None else min(cfg.batch_size, n_train)
    # a lone last row joins the previous batch (BatchNorm cannot train on one sample)
    steps = max(1, n_train // bs + (n_train % bs > 1))
    method.setup(data)
    groups = [g for g in method.param_groups() if g["params"]]
    params = [p for g in groups for p in g["params"]]
    if not params:
        raise CmkdError("nothing to train: the method has no trainable parameters")
    opt = make_optimizer(groups, cfg)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor(cfg, steps))
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    gen = torch.Generator().manual_seed(cfg.seed)
    key, higher = method.selection(data.task)
    best_score, best_loss, best_epoch = -math.inf, math.inf, 0
    best_state: dict[str, Tensor] | None = None
    history: list[dict] = []
    best_metrics: dict[str, float] = {}
    frozen_ids = {id(m) for m in method.frozen_modules()}
    frozen_prefixes = tuple(f"{n}." for n, m in method.named_modules() if id(m) in frozen_ids)

    def trainable_state() -> dict[str, Tensor]:  # everything but the frozen modules (teachers)
        return {k: v for k, v in method.state_dict().items() if not k.startswith(frozen_prefixes)}

    start_state = trainable_state()
    settings = st.fingerprint(
        {
            "cfg": cfg.record(),
            "method": getattr(method, "record", lambda: {})(),
            "rows": n_train,
            "names": list(start_state),
            # the starting weights and input statistics: another table or width is refused, not resumed
            "start": st.tensor_digest(start_state),
        }
    )
    start = 1
    if resume:
        tensors, header = st.load_state(state_file)
        if header.get("fingerprint") != settings:
            raise CmkdError(f"{state_file}: saved with other settings or data; rerun without --resume")
        method.load_state_dict(st.prefixed(tensors, "model."), strict=False)
        st.restore_optimizer(opt, tensors, header)
        sched.load_state_dict({**sched.state_dict(), **header["scheduler"]})
        gen.set_state(tensors["rng.perm"])
        torch.set_rng_state(tensors["rng.torch"])
        best = st.prefixed(tensors, "best.")
        best_state = {k: v.to(device) for k, v in best.items()} or None
        best_score, best_loss, best_epoch = header["best_score"], header["best_loss"], header["best_epoch"]
        best_metrics, history = header["best_metrics"], header["history"]
        start = header["epoch"] + 1
        if not quiet:
            print(f"note: resuming from {state_file} after epoch {header['epoch']}", file=sys.stderr)

    from tqdm.auto import tqdm

    bar = tqdm(
        range(start, cfg.epochs + 1),
        desc=desc,
        unit="epoch",
        file=sys.stderr,
        disable=quiet,
        leave=False,
        dynamic_ncols=True,
        initial=start - 1,
        total=cfg.epochs,
    )
    last_save = time.perf_counter()
    for epoch in bar:
        t0 = time.perf_counter()
        method.train()
        method.on_epoch_start(epoch)
        perm = train_idx[torch.randperm(n_train, generator=gen).to(device)] if bs < n_train else train_idx
        lr_now = opt.param_groups[0]["lr"]  # the rate this epoch starts with
        sums: dict[str, Tensor] = {}
        for s in range(steps):
            idx = perm[s * bs : n_train if s == steps - 1 else (s + 1) * bs]
            batch = Batch(LazyRows(data.inputs, idx), None if data.target is None else data.target[idx], idx)
            with autocast(cfg.precision, device):
                terms = method.training_step(batch)
                loss = sum(method.loss_weights.get(k, 1.0) * v for k, v in terms.items())
            opt.zero_grad(set_to_none=True)
            if scaler is not None:
                scaler.scale(loss).backward()
                scaler.unscale_(opt)
            else:
                loss.backward()
            if cfg.clip_grad:
                nn.utils.clip_grad_norm_(params, cfg.clip_grad)
            if scaler is not None:
                scaler.step(opt)
                scaler.update()
            else:
                opt.step()
            sched.step()
            method.after_step(batch, {k: v.detach() for k, v in terms.items()}, (epoch - 1) * steps + s)
            w = float(len(idx))
            for k, v in (("loss", loss), *terms.items()):
                d = v.detach().float() * w
                sums[k] = sums[k] + d if k in sums else d
        row: dict = {"epoch": epoch, "lr": lr_now}
        row.update({f"train/{k}": float(v) / n_train for k, v in sums.items()})
        if not math.isfinite(row["train/loss"]):
            raise CmkdError(
                f"training diverged at epoch {epoch} (loss {row['train/loss']}); lower --lr or clip gradients"
            )
        if len(val_idx):
            vm = method.validate(data, val_idx, cfg.precision, cfg.eval_batch_size)
            row.update({f"val/{k}": v for k, v in vm.items()})
            score = (vm[key] if higher else -vm[key]) if math.isfinite(vm[key]) else -math.inf  # mAP: NaN w/o positives
            if select == "best" and (score > best_score or (score == best_score and vm["loss"] < best_loss)):
                best_score, best_loss, best_epoch = score, vm["loss"], epoch
                best_state = copy.deepcopy(student.state_dict())
                best_metrics = {f"val/{k}": v for k, v in vm.items()}
        row["time_s"] = round(time.perf_counter() - t0, 4)
        history.append(row)
        if state_file and (epoch in (start, cfg.epochs) or time.perf_counter() - last_save >= STATE_INTERVAL_S):
            last_save = time.perf_counter()
            st.save_state(
                state_file,
                model=trainable_state(),
                optimizer=opt,
                scheduler=sched,
                best=best_state,
                rng={"perm": gen.get_state(), "torch": torch.get_rng_state()},
                meta={
                    "epoch": epoch,
                    "fingerprint": settings,
                    "best_score": best_score,
                    "best_loss": best_loss,
                    "best_epoch": best_epoch,
                    "best_metrics": best_metrics,
                    "history": history,
                },
            )
        if not quiet:
            post = {"loss": f"{row['train/loss']:.4f}"}
            if f"val/{key}" in row:
                post[f"val_{key}"] = f"{row[f'val/{key}']:.4f}"
            bar.set_postfix(post, refresh=False)
        if on_epoch_end is not None:
            on_epoch_end(epoch, row)
    bar.close()
    final = {k: v for k, v in history[-1].items() if k.startswith(("train/", "val/"))}
    if select == "last" or best_state is None:
        best_state, best_epoch, best_metrics = student.state_dict(), cfg.epochs, final
    return FitResult(best_state, best_epoch, history, final, best_metrics)
