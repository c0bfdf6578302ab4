"""Fit a cross-modal information bottleneck (CIBA Algorithm 1) on the shared training core, and sweep H.

``fit_bottleneck`` trains one bottleneck from teacher features z' to student features z (both of models trained
without distillation): loss ``||z_hat - z||^2 + lambda * KL`` (dvib, attention) or ``||z_hat - z||^2 +
codebook + commit`` (vqvae), on the train split, keeping the epoch with the lowest validation loss.

``sweep`` fits one per H and reports, per H, the reconstruction error and the singular value spectrum of the
decoded outputs ``z_hat`` (CIBA Sec. 5.1.3, Fig. 5b), and ``choose_dim`` picks H where that spectrum stops
changing:

    d(H, H2) = mean over i < r of | log10 max(s_i(H), f) - log10 max(s_i(H2), f) |

with ``s(H)`` the singular values of the centred ``z_hat`` of the H-bottleneck on the evaluation rows,
``f = 1e-3 * s_1(H_max)`` a floor (values below it count as collapsed), and ``r`` the number of values of the
largest H's spectrum above the floor. The chosen H is the smallest H of the sweep whose spectrum is within
``tol`` decades of the spectrum of every larger H in the sweep (``d(H, H2) <= tol`` for all ``H2 > H``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine.config import BottleneckOptions, TrainConfig
from cmkdtool.engine.loop import Batch, FitResult, Method, fit, seed_everything
from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.nn.bottleneck import VQIB, Bottleneck, build_bottleneck

SPECTRUM_FLOOR = 1e-3  # relative to the largest H's top singular value


class BottleneckFit(Method):
    """The engine's view of Algorithm 1: the bottleneck is the trained ("student") module."""

    name = "fit-bottleneck"

    def __init__(self, bottleneck: Bottleneck, kl_weight: float, seed: int = 0) -> None:
        super().__init__()
        self.student = bottleneck
        self.loss_weights = {"kl": kl_weight}
        self.seed = seed

    def setup(self, data: TensorData) -> None:
        if isinstance(self.student, VQIB):
            train = data.index("train")
            self.student.init_codebook(data.inputs["teacher"][train], torch.Generator().manual_seed(self.seed))

    def training_step(self, batch: Batch) -> dict[str, Tensor]:
        return self.student.losses(batch.inputs["teacher"], batch.inputs["student"], sample=True)

    @torch.no_grad()
    def validate(self, data: TensorData, index: Tensor, precision: str, batch_size: int) -> dict[str, float]:
        return evaluate(self.student, data, index, self.loss_weights, batch_size)

    def selection(self, task: str | None) -> tuple[str, bool]:
        return "loss", False

    def record(self) -> dict:
        return {"spec": {k: v for k, v in self.student.spec.items() if k not in ("teacher", "student")}}


@torch.no_grad()
def evaluate(
    bottleneck: Bottleneck, data: TensorData, index: Tensor, weights: dict[str, float], batch_size: int = 8192
) -> dict[str, float]:
    """Deterministic loss terms (h' = its mean or code) on rows ``index``, their weighted sum ``loss``, and
    ``r2 = 1 - recon / sum of the variances of z`` (the share of the student feature's variance explained)."""
    was = bottleneck.training
    bottleneck.eval()
    sums: dict[str, float] = {}
    for start in range(0, len(index), batch_size):
        idx = index[start : start + batch_size]
        terms = bottleneck.losses(data.inputs["teacher"][idx], data.inputs["student"][idx], sample=False)
        for k, v in terms.items():
            sums[k] = sums.get(k, 0.0) + float(v) * len(idx)
    bottleneck.train(was)
    n = max(len(index), 1)
    out = {k: v / n for k, v in sums.items()}
    out["loss"] = sum(weights.get(k, 1.0) * v for k, v in out.items())
    z = data.inputs["student"][index].double()
    total = float(z.var(0, unbiased=False).sum()) if len(index) else 0.0
    out["r2"] = 1.0 - out["recon"] / total if total > 0 else float("nan")
    return out


def feature_data(teacher: Tensor, student: Tensor, split: np.ndarray, ids: np.ndarray, source: str) -> TensorData:
    """A TensorData holding the two feature matrices as inputs ``teacher`` and ``student`` (no labels)."""
    if len(teacher) != len(student):
        raise CmkdError(f"{len(teacher)} teacher feature rows but {len(student)} student feature rows")
    for name, x in (("teacher", teacher), ("student", student)):
        if not torch.isfinite(x).all():
            raise CmkdError(f"{source}: the {name} features contain NaN or inf; check the checkpoint and the table")
    return TensorData(
        ids=ids,
        inputs={"teacher": teacher.float(), "student": student.float()},
        shapes={"teacher": (teacher.shape[1],), "student": (student.shape[1],)},
        target=None,
        labels=None,
        split=split,
        task=None,
        num_classes=None,
        class_names=None,
        source=source,
    )


def fit_bottleneck(
    data: TensorData,
    dim: int,
    options: BottleneckOptions | None = None,
    config: TrainConfig | None = None,
    *,
    records: dict | None = None,
    quiet: bool = False,
    state_file: str | None = None,
    resume: bool = False,
) -> tuple[Bottleneck, FitResult]:
    """Train an H = ``dim`` bottleneck from ``data.inputs['teacher']`` to ``data.inputs['student']``."""
    options = options or BottleneckOptions()
    cfg = config or TrainConfig()
    t, s = data.inputs["teacher"], data.inputs["student"]
    spec = options.spec(t.shape[1], s.shape[1], dim, **(records or {}))
    seed_everything(cfg.seed)
    bn = build_bottleneck(spec).to(data.device)
    bn.norm.fit(t, data.index("train"))
    method = BottleneckFit(bn, options.kl_weight, cfg.seed)
    result = fit(method, data, cfg, quiet=quiet, desc=f"fit-bottleneck H={dim}", state_file=state_file, resume=resume)
    bn.load_state_dict(result.state_dict)
    return bn.eval(), result


@dataclass
class SweepPoint:
    dim: int
    bottleneck: Bottleneck
    result: FitResult
    metrics: dict[str, float]
    spectrum: np.ndarray
    summary: dict = field(default_factory=dict)


@torch.no_grad()
def decoded_spectrum(bottleneck: Bottleneck, data: TensorData, index: Tensor) -> np.ndarray:
    """Singular values of the centred decoded outputs z_hat on rows ``index`` (CIBA Fig. 5b)."""
    from cmkdtool.analysis.spectrum import singular_values

    out = torch.cat([bottleneck(data.inputs["teacher"][index[i : i + 8192]]) for i in range(0, len(index), 8192)])
    return singular_values(out.float().cpu().numpy(), center=True)


def spectrum_distance(a: np.ndarray, b: np.ndarray, floor: float, r: int) -> float:
    """Mean absolute difference of log10 singular values over the first ``r`` indices, floored at ``floor``."""
    n = min(len(a), len(b), r)
    if n == 0:
        return 0.0
    la = np.log10(np.maximum(a[:n], floor))
    lb = np.log10(np.maximum(b[:n], floor))
    return float(np.mean(np.abs(la - lb)))


def choose_dim(spectra: dict[int, np.ndarray], tol: float = 0.1) -> tuple[int, dict[int, float]]:
    """The smallest H whose spectrum is within ``tol`` (decades) of every larger H's; and, per H, the largest
    distance to a larger H (0 for the largest). See the module docstring for the rule."""
    dims = sorted(spectra)
    top = spectra[dims[-1]]
    if not len(top) or not top[0] > 0:
        return dims[-1], dict.fromkeys(dims, 0.0)
    floor = SPECTRUM_FLOOR * float(top[0])
    r = int((top > floor).sum())
    worst = {
        h: max((spectrum_distance(spectra[h], spectra[h2], floor, r) for h2 in dims if h2 > h), default=0.0)
        for h in dims
    }
    chosen = next(h for h in dims if worst[h] <= tol)
    return chosen, worst


def sweep(
    data: TensorData,
    dims: list[int],
    options: BottleneckOptions | None = None,
    config: TrainConfig | None = None,
    *,
    eval_split: str = "val",
    records: dict | None = None,
    quiet: bool = False,
    on_fit=None,
) -> list[SweepPoint]:
    """Fit one bottleneck per H in ``dims`` and measure each on ``eval_split`` rows (train if that is empty)."""
    from cmkdtool.analysis.spectrum import summarize

    options = options or BottleneckOptions()
    if not dims or any(h < 1 for h in dims):
        raise CmkdUsageError(f"bottleneck dimensions must be positive integers; got {dims}")
    index = data.index(eval_split)
    if len(index) == 0:
        index = data.index("train")
    weights = {"kl": options.kl_weight}
    points = []
    for h in sorted(set(dims)):
        bn, result = fit_bottleneck(data, h, options, config, records=records, quiet=quiet)
        metrics = evaluate(bn, data, index, weights)
        sv = decoded_spectrum(bn, data, index)
        point = SweepPoint(h, bn, result, metrics, sv, summarize(sv, (len(index), int(data.shapes["student"][0]))))
        points.append(point)
        if on_fit is not None:
            on_fit(point)
    return points


__all__ = [
    "BottleneckFit",
    "BottleneckOptions",
    "SweepPoint",
    "choose_dim",
    "decoded_spectrum",
    "evaluate",
    "feature_data",
    "fit_bottleneck",
    "spectrum_distance",
    "sweep",
]
