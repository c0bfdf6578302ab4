"""The one training loop every command runs on.

A *method* (``engine/method.py``) owns its modules and returns its loss as named terms; the trainer weights and
sums them, runs the backward pass (or lets the method take it over), clips, steps the main optimizer, the
method's own optimizers and the schedules, asks the method for its validation metrics each epoch, keeps the best
(or last) weights, logs every term to the history and shows progress on a terminal. Batches come from a
``BatchSource`` (index slices of tensors already on the device); loss values are accumulated on the device and
read back once per epoch (no per-step host sync).

Under torchrun (``WORLD_SIZE`` > 1) the same loop trains with DistributedDataParallel: the step runs through
the DDP wrapper (gradients averaged over processes), each process takes its part of every global batch and
weights its loss by ``Batch.share``, the methods' own optimizers average their gradients, epoch sums are
reduced once per epoch, and rank 0 alone writes the training state and shows progress (docs/scaling.md).
"""

from __future__ import annotations

import copy
import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine import state as st
from cmkdtool.engine.batches import BatchSource, make_batches
from cmkdtool.engine.config import TrainConfig
from cmkdtool.engine.device import autocast
from cmkdtool.engine.distributed import DistContext, setup
from cmkdtool.engine.method import Batch, Method, Step
from cmkdtool.engine.optim import make_optimizer, make_own_optimizer, make_schedule
from cmkdtool.errors import CmkdError, CmkdUsageError

STATE_INTERVAL_S = 10.0  # at most one training-state save per this many seconds (plus the first and last epoch)
MAIN = "main"  # the name of the engine's optimizer in the training state


@dataclass
class FitResult:
    state_dict: dict[str, Tensor]
    best_epoch: int
    history: list[dict]
    final_metrics: dict[str, float]
    best_metrics: dict[str, float]
    epoch_seconds: list[float] = field(default_factory=list)  # wall time of each epoch run (not in the history)
    world_size: int = 1  # processes that trained it (torchrun)


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _progress(quiet: bool, dist: DistContext) -> bool:
    """Progress bars only for a person: on a terminal, on the main process, unless --quiet."""
    return not quiet and dist.is_main and sys.stderr.isatty()


class _Step(nn.Module):
    """The method's training step as a module's ``forward``, so that DDP sees the step (a step that bypasses
    the wrapper's ``forward`` would never synchronise its gradients)."""

    def __init__(self, method: Method) -> None:
        super().__init__()
        self.method = method

    def forward(self, batch: Batch) -> tuple[Step, Tensor]:
        method = self.method
        out = method.training_step(batch)
        step = out if isinstance(out, Step) else Step(out)
        loss = sum(method.loss_weights.get(k, 1.0) * v for k, v in step.terms.items())
        return step, loss


class Trainer:
    """Trains ``method`` on the train rows of ``data`` with ``cfg``; see ``fit``."""

    def __init__(
        self,
        method: Method,
        data: TensorData,
        cfg: TrainConfig,
        *,
        quiet: bool = False,
        desc: str = "train",
        state_file: str | None = None,
        dist: DistContext | None = None,
        batches: BatchSource | None = None,
    ) -> None:
        cfg.validate()
        self.device = data.device
        dist = dist or setup(self.device)  # joins torchrun's process group; one process: SINGLE
        if dist.world_size > 1 and method.single_process_reason:
            raise CmkdUsageError(
                f"{method.name} cannot train under {dist.world_size} processes: {method.single_process_reason}; "
                "run it as one process"
            )
        self.method, self.data, self.cfg, self.quiet, self.desc = method, data, cfg, quiet, desc
        self.state_file, self.dist = state_file, dist
        method.to(self.device)
        self.train_idx, self.val_idx = data.index("train"), data.index("val")
        if len(self.train_idx) == 0:
            raise CmkdError(f"{data.source}: the train split is empty; add a 'split' column or change --split-ratio")
        if cfg.select == "acer" and (data.task != "multiclass" or data.num_classes != 2):
            raise CmkdUsageError("--select acer needs a two-class table (bona fide = class 1); use --select best")
        method.configure(cfg)  # the method computes the metric it is selected on (val ACER for 'acer')
        self.select = "best" if cfg.select == "acer" else cfg.select
        if self.select == "best" and len(self.val_idx) == 0:
            self.select = "last"
            if not quiet and dist.is_main:
                print(f"note: {data.source} has no val rows; keeping the last epoch's weights", file=sys.stderr)
        self.batches = batches or make_batches(data, self.train_idx, cfg.batch_size, dist)
        method.setup(data)
        groups = [g for g in method.param_groups() if g["params"]]
        self.params = [p for g in groups for p in g["params"]]
        if not self.params:
            raise CmkdError("nothing to train: the method has no trainable parameters")
        steps = self.batches.steps_per_epoch
        self.opt = make_optimizer(groups, cfg)
        specs = method.optimizers()
        for name in specs:
            if name == MAIN or not name.isidentifier():
                raise CmkdError(f"own optimizer name {name!r}: use an identifier other than {MAIN!r}")
        self.own = {name: make_own_optimizer(name, spec, cfg) for name, spec in specs.items()}
        self.optimizers = {MAIN: self.opt, **self.own}
        self.schedulers = {MAIN: make_schedule(self.opt, cfg, steps)}
        self.schedulers.update({n: make_schedule(o, cfg, steps) for n, o in self.own.items() if specs[n].schedule})
        self.scaler = torch.amp.GradScaler(self.device.type) if cfg.precision == "fp16" else None
        if self.scaler is not None:  # a step the scaler skips (inf/NaN gradients) still advances the schedule
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before")
        self.gen = torch.Generator().manual_seed(cfg.seed)  # the same permutation on every process
        self.step_module: nn.Module = _Step(method)
        if dist.active:
            from torch.nn.parallel import DistributedDataParallel as DDP

            if dist.world_size > 1:  # dropout and other draws differ between processes (one keeps its stream)
                torch.manual_seed(cfg.seed + 1_000_003 * dist.rank)
            own = {id(p) for spec in method.optimizers().values() for p in spec.params}
            ignore = [f"method.{n}" for n, p in method.named_parameters() if id(p) in own]
            ignore += [f"method.{n}" for n, _ in method.named_buffers()]  # method state stays per process
            DDP._set_params_and_buffers_to_ignore_for_model(self.step_module, ignore)
            self.step_module = DDP(
                self.step_module,
                device_ids=None,  # the batch is already on this process's device: no input moves
                # a term switched off (--task-weight 0) leaves parameters unused; which ones is fixed for a run
                # (a method whose trained set changes between steps refuses several processes), so DDP learns
                # the set in the first step instead of searching the graph every step (compiled: searched)
                static_graph=cfg.compile == "off",
                find_unused_parameters=cfg.compile != "off",
                broadcast_buffers=False,
            )
        self.own_params = {name: list(spec.params) for name, spec in specs.items()}
        self.step_fn = self.step_module
        if cfg.compile != "off":
            self.step_fn = torch.compile(self.step_module, mode=cfg.compile, dynamic=None)
        frozen_ids = {id(m) for m in method.frozen_modules()}
        self.frozen_prefixes = tuple(f"{n}." for n, m in method.named_modules() if id(m) in frozen_ids)
        start_state = self.trainable_state()
        frozen_state = {k: v for k, v in method.state_dict().items() if k.startswith(self.frozen_prefixes)}
        self.fingerprint = st.fingerprint(
            {
                "frozen": st.tensor_digest(frozen_state),  # another teacher is another run
                "cfg": cfg.record(),
                "method": method.record(),
                "rows": self.batches.rows,
                "names": list(start_state),
                "optimizers": list(self.optimizers),
                # the starting weights and input statistics: another table or width is refused, not resumed
                "start": st.tensor_digest(start_state),
            }
        )
        self.key, self.higher = method.selection(data.task)
        self.best_score, self.best_loss, self.best_epoch = -math.inf, math.inf, 0
        self.best_state: dict[str, Tensor] | None = None
        self.best_metrics: dict[str, float] = {}
        self.history: list[dict] = []
        self.epoch_seconds: list[float] = []
        self.start = 1

    def trainable_state(self) -> dict[str, Tensor]:
        """Everything but the frozen modules (teachers): weights and buffers (method state)."""
        return {k: v for k, v in self.method.state_dict().items() if not k.startswith(self.frozen_prefixes)}

    # ---- resume --------------------------------------------------------------------------------------------

    def _load_state(self) -> tuple[dict[str, Tensor], dict]:
        """Rank 0 reads the state file and hands it to the other processes (no shared file system needed); a
        failure is raised on every process alike."""
        dist = self.dist
        loaded: tuple | str = ""
        if dist.is_main:
            try:
                loaded = st.load_state(self.state_file)
            except CmkdError as e:
                loaded = str(e)
        loaded = dist.broadcast_object(loaded)
        if isinstance(loaded, str):
            raise CmkdError(loaded)
        return loaded

    def restore(self) -> None:
        tensors, header = self._load_state()
        if header.get("fingerprint") != self.fingerprint:
            raise CmkdError(f"{self.state_file}: saved with other settings or data; rerun without --resume")
        self.method.load_state_dict(st.prefixed(tensors, "model."), strict=False)
        st.restore_optimizers(self.optimizers, self.schedulers, tensors, header)
        if self.scaler is not None and header.get("scaler"):
            self.scaler.load_state_dict(header["scaler"])
        self.gen.set_state(tensors["rng.perm"])
        # each process continues its own stream; a run resumed with another number of processes keeps rank r's
        # stream where it has one (dropout then draws differently from an uninterrupted run)
        rank, saved_world = self.dist.rank, int(header.get("world_size", 1))
        suffix = f".{rank}" if saved_world > 1 else ""
        if f"rng.torch{suffix}" in tensors:
            torch.set_rng_state(tensors[f"rng.torch{suffix}"])
        if f"rng.cuda{suffix}" in tensors and self.device.type == "cuda":
            torch.cuda.set_rng_state(tensors[f"rng.cuda{suffix}"], self.device)
        best = st.prefixed(tensors, "best.")
        self.best_state = {k: v.to(self.device) for k, v in best.items()} or None
        self.best_score, self.best_loss = header["best_score"], header["best_loss"]
        self.best_epoch, self.best_metrics, self.history = (
            header["best_epoch"],
            header["best_metrics"],
            header["history"],
        )
        self.start = header["epoch"] + 1
        if not self.quiet and self.dist.is_main:
            print(f"note: resuming from {self.state_file} after epoch {header['epoch']}", file=sys.stderr)

    def _rng_states(self) -> dict[str, Tensor]:
        """The permutation generator and each process's torch (and CUDA) RNG (``torch.<rank>`` under several
        processes, gathered on every process: a collective)."""
        rng = {"perm": self.gen.get_state()}
        local = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            local["cuda"] = torch.cuda.get_rng_state(self.device)
        if not self.dist.active:
            return {**rng, **local}
        for key, state in local.items():
            parts = self.dist.all_gather(state.to(self.device))  # NCCL gathers device tensors
            rng.update({f"{key}.{r}": p.cpu() for r, p in enumerate(parts)})
        return rng

    def save(self, epoch: int) -> None:
        rng = self._rng_states()  # every process takes part; rank 0 writes
        if not self.dist.is_main:
            return
        st.save_state(
            self.state_file,
            model=self.trainable_state(),
            optimizers=self.optimizers,
            schedulers=self.schedulers,
            best=self.best_state,
            rng=rng,
            meta={
                "epoch": epoch,
                "fingerprint": self.fingerprint,
                "best_score": self.best_score,
                "best_loss": self.best_loss,
                "best_epoch": self.best_epoch,
                "best_metrics": self.best_metrics,
                "history": self.history,
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "world_size": self.dist.world_size,
            },
        )

    # ---- one step, one epoch ----------------------------------------------------------------------------

    def _scale(self, loss: Tensor) -> Tensor:
        return self.scaler.scale(loss) if self.scaler is not None else loss

    def _step_optimizer(self, opt: torch.optim.Optimizer, params: list[nn.Parameter] | None) -> None:
        if all(p.grad is None for g in opt.param_groups for p in g["params"]):
            return  # nothing reached it this step (fp16's scaler cannot step an optimizer without gradients)
        if self.scaler is not None:
            self.scaler.unscale_(opt)
        if self.cfg.clip_grad and params:
            nn.utils.clip_grad_norm_(params, self.cfg.clip_grad)
        if self.scaler is not None:
            self.scaler.step(opt)
        else:
            opt.step()

    def train_step(self, batch: Batch, index: int, sums: dict[str, Tensor]) -> None:
        method = self.method
        with autocast(self.cfg.precision, self.device):
            step, loss = self.step_fn(batch)
            terms = step.terms
        self.opt.zero_grad(set_to_none=True)
        for o in self.own.values():
            o.zero_grad(set_to_none=True)
        # DDP averages gradients over processes: weighting each process's mean by its share of the global batch
        # makes that average the gradient of the global batch's mean loss (uneven splits included)
        method.backward(loss * batch.share if self.dist.active else loss, terms, self._scale)
        self._step_optimizer(self.opt, self.params)
        self.schedulers[MAIN].step()
        if self.own:
            with autocast(self.cfg.precision, self.device):  # the step's outputs may be half precision
                own_losses = method.own_losses(batch, step)
            for name, o in self.own.items():
                if name not in own_losses:
                    continue
                own_loss = own_losses[name]
                if own_loss is not None:
                    o.zero_grad(set_to_none=True)
                    self._scale(own_loss * batch.share if self.dist.active else own_loss).backward()
                self.dist.average_grads(self.own_params[name])  # DDP does not manage own optimizers
                if own_loss is not None:
                    w = float(len(batch.index))
                    d = own_loss.detach().float() * w
                    key = f"{name}_loss"
                    sums[key] = sums[key] + d if key in sums else d
                self._step_optimizer(o, None)
                if name in self.schedulers:
                    self.schedulers[name].step()
        if self.scaler is not None:
            self.scaler.update()
        method.after_step(batch, step, index)
        w = float(len(batch.index))
        for k, v in (("loss", loss), *terms.items()):
            d = v.detach().float() * w
            sums[k] = sums[k] + d if k in sums else d

    def train_epoch(self, epoch: int) -> dict:
        method = self.method
        method.train()
        method.on_epoch_start(epoch)
        lr_now = self.opt.param_groups[0]["lr"]  # the rate this epoch starts with
        sums: dict[str, Tensor] = {}
        steps = self.batches.steps_per_epoch
        for s, batch in enumerate(self.batches.epoch(self.gen)):
            self.train_step(batch, (epoch - 1) * steps + s, sums)
        n = self.batches.rows
        row: dict = {"epoch": epoch, "lr": lr_now}
        row.update({f"train/{k}": float(self.dist.all_reduce_sum(v)) / n for k, v in sums.items()})
        if not math.isfinite(row["train/loss"]):
            raise CmkdError(
                f"training diverged at epoch {epoch} (loss {row['train/loss']}); lower --lr or clip gradients"
            )
        return row

    def validate_epoch(self, epoch: int, row: dict) -> None:
        if not len(self.val_idx):
            return
        if self.dist.active:  # every process validates rank 0's model (BatchNorm statistics are per process)
            self.dist.broadcast_([b for _, b in self.method.student.named_buffers() if b.is_floating_point()])
        vm = self.method.validate(self.data, self.val_idx, self.cfg.precision, self.cfg.eval_batch_size)
        row.update({f"val/{k}": v for k, v in vm.items()})
        key, higher = self.key, self.higher
        score = (vm[key] if higher else -vm[key]) if math.isfinite(vm[key]) else -math.inf  # mAP: NaN w/o positives
        if self.select == "best" and (
            score > self.best_score or (score == self.best_score and vm["loss"] < self.best_loss)
        ):
            self.best_score, self.best_loss, self.best_epoch = score, vm["loss"], epoch
            self.best_state = copy.deepcopy(self.method.student.state_dict())
            self.best_metrics = {f"val/{k}": v for k, v in vm.items()}

    # ---- the run ------------------------------------------------------------------------------------------

    def fit(self, resume: bool = False, on_epoch_end: Callable[[int, dict], None] | None = None) -> FitResult:
        if resume:
            self.restore()
        from tqdm.auto import tqdm

        cfg = self.cfg
        bar = tqdm(
            range(self.start, cfg.epochs + 1),
            desc=self.desc,
            unit="epoch",
            file=sys.stderr,
            disable=not _progress(self.quiet, self.dist),
            leave=False,
            dynamic_ncols=True,
            initial=self.start - 1,
            total=cfg.epochs,
        )
        last_save = time.perf_counter()
        for epoch in bar:
            t0 = time.perf_counter()
            row = self.train_epoch(epoch)
            self.validate_epoch(epoch, row)
            self.method.on_epoch_end(epoch, row)
            self.history.append(row)
            self.epoch_seconds.append(time.perf_counter() - t0)
            due = epoch in (self.start, cfg.epochs) or time.perf_counter() - last_save >= STATE_INTERVAL_S
            due = self.dist.broadcast_object(due)  # rank 0's clock decides: saving gathers from every process
            if self.state_file and due:
                last_save = time.perf_counter()
                self.save(epoch)
            post = {"loss": f"{row['train/loss']:.4f}"}
            if f"val/{self.key}" in row:
                post[f"val_{self.key}"] = f"{row[f'val/{self.key}']:.4f}"
            bar.set_postfix(post, refresh=False)
            if on_epoch_end is not None:
                on_epoch_end(epoch, row)
        bar.close()
        final = {k: v for k, v in self.history[-1].items() if k.startswith(("train/", "val/"))}
        best_state, best_epoch, best_metrics = self.best_state, self.best_epoch, self.best_metrics
        if self.select == "last" or best_state is None:
            best_state, best_epoch, best_metrics = self.method.student.state_dict(), cfg.epochs, final
        return FitResult(
            best_state, best_epoch, self.history, final, best_metrics, self.epoch_seconds, self.dist.world_size
        )


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
    dist: DistContext | None = None,
    batches: BatchSource | None = None,
) -> FitResult:
    """Train ``method`` on the train split of ``data``; select on the val split; return the student's weights.

    With ``state_file`` the full training state is saved there after the first and the last epoch and after an
    epoch that ends ``STATE_INTERVAL_S`` seconds or more after the previous save (a save per epoch would dominate
    runs of many tiny epochs); ``resume`` continues from it, reaching the same weights as an uninterrupted run
    (bit-identical on the CPU), own optimizers and method state (buffers) included.
    """
    trainer = Trainer(method, data, cfg, quiet=quiet, desc=desc, state_file=state_file, dist=dist, batches=batches)
    return trainer.fit(resume=resume, on_epoch_end=on_epoch_end)


__all__ = ["FitResult", "Trainer", "fit", "seed_everything"]
