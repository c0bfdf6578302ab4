"""Fit a cross-modal information bottleneck (CIBA Algorithm 1) on the shared training core, and sweep H.

``fit_bottleneck`` trains one bottleneck from teacher features z' to student features z (both of models trained
without distillation; ``methods.bottleneck.BottleneckFit``), on the train split, keeping the epoch with the lowest
validation loss.

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

import sys
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine.config import TrainConfig
from cmkdtool.engine.trainer import FitResult, fit, seed_everything
from cmkdtool.errors import CmkdUsageError
from cmkdtool.methods.bottleneck import BottleneckFit, evaluate
from cmkdtool.nn.bottleneck import Bottleneck, build_bottleneck
from cmkdtool.nn.inference import map_rows
from cmkdtool.nn.specs import BottleneckOptions

SPECTRUM_FLOOR = 1e-3  # relative to the largest H's top singular value


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

    out = torch.cat(map_rows(lambda idx: bottleneck(data.inputs["teacher"][idx]), index, bottleneck))
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
    "BottleneckRun",
    "run_fit_bottleneck",
    "SweepPoint",
    "choose_dim",
    "decoded_spectrum",
    "fit_bottleneck",
    "spectrum_distance",
    "sweep",
]


# ---- the whole fit-bottleneck run ---------------------------------------------------------------------------


@dataclass
class BottleneckRun:
    """The bottlenecks fitted per H, the chosen H, one summary row per H and the training record."""

    points: list[SweepPoint]
    chosen: int
    rows: list[dict]
    record: dict

    @property
    def best(self) -> SweepPoint:
        return next(p for p in self.points if p.dim == self.chosen)

    def save(self, output: str, save_all: bool = False) -> list[str]:
        """Write the chosen bottleneck to ``output`` with its history; with ``save_all`` every H of a sweep as
        ``<stem>.h<H>.safetensors`` too. Returns the extra paths written."""
        from pathlib import Path

        from cmkdtool.io.checkpoints import save_checkpoint
        from cmkdtool.io.history import write_history

        best = self.best
        save_checkpoint(output, best.bottleneck.state_dict(), best.bottleneck.spec, self.record)
        write_history(output, best.result.history)
        written = []
        if save_all and len(self.points) > 1:
            stem = Path(output)
            for p in self.points:
                path = stem.with_name(f"{stem.stem}.h{p.dim}{stem.suffix or '.safetensors'}")
                save_checkpoint(path, p.bottleneck.state_dict(), p.bottleneck.spec, {**self.record, "H": p.dim})
                written.append(str(path))
        return written

    def plot(self, path: str) -> None:
        """The decoded-output spectra per H (CIBA Fig. 5b), the chosen H drawn thicker."""
        from cmkdtool.analysis.spectrum import plot_bottleneck_spectra

        plot_bottleneck_spectra(path, [(p.dim, p.spectrum) for p in self.points], self.chosen)


def run_fit_bottleneck(
    teacher: str,
    baseline: str,
    tables: list[str],
    dims: list[int],
    *,
    options: BottleneckOptions | None = None,
    config: TrainConfig | None = None,
    tol: float = 0.1,
    eval_split: str = "val",
    teacher_layer: str = "embedding",
    student_layer: str = "embedding",
    split_ratio=None,
    split_seed: int | None = None,
    device="auto",
    quiet: bool = False,
    command: str | None = None,
    on_fit=None,
) -> BottleneckRun:
    """``cmkdtool fit-bottleneck``: features z' of ``teacher``'s ``teacher_layer`` and z of ``baseline``'s
    ``student_layer`` on ``tables`` (the teacher's split rule unless given), one bottleneck per H in ``dims``
    (``sweep``), the H chosen by ``choose_dim``."""
    from dataclasses import asdict

    from cmkdtool.engine.inference import predict_layers
    from cmkdtool.engine.state import tensor_digest
    from cmkdtool.io.provenance import file_record, provenance
    from cmkdtool.methods.bottleneck import feature_data
    from cmkdtool.pipelines.open import open_checkpoint, show_notes

    options = options or BottleneckOptions()
    cfg = config or TrainConfig()
    if not dims or min(dims) < 1:
        raise CmkdUsageError(f"bottleneck dimensions must be positive integers; got {dims}")
    if eval_split not in ("train", "val", "test"):
        raise CmkdUsageError(f"--eval-split must be train, val or test, not '{eval_split}'")
    options.spec(1, 1, 1)  # check the options before reading any data
    cfg.validate()
    from cmkdtool.io.checkpoints import read_metadata

    b_inputs = [i["name"] for i in read_metadata(baseline)[0].get("inputs", [])]
    t = open_checkpoint(
        teacher, tables, device, columns=b_inputs, split_ratio=split_ratio, split_seed=split_seed, need_labels=False
    )
    show_notes(t.notes, quiet)
    b = open_checkpoint(baseline, tables, t.data.device, split_ratio=t.split_ratio, split_seed=t.split_seed,
                        need_labels=False, table=t.table)  # fmt: skip
    rows_all = torch.arange(len(t.data), device=t.data.device)
    zt = predict_layers(t.model, t.data, rows_all, [teacher_layer])[teacher_layer]
    zs = predict_layers(b.model, b.data, rows_all, [student_layer])[student_layer]
    fdata = feature_data(zt, zs, t.data.split, t.data.ids, t.table.name)
    if fdata.count("train") == 0:
        raise CmkdUsageError(f"{t.table.name}: no train rows; add a 'split' column or change --split-ratio")
    records = {
        "teacher": file_record(
            teacher, weights=tensor_digest(t.model.state_dict()), layer=teacher_layer, inputs=t.inputs
        ),
        "student": file_record(baseline, layer=student_layer, inputs=b.inputs),
    }
    if not quiet:
        print(
            f"z' = {teacher} {teacher_layer} ({zt.shape[1]} dims), z = {baseline} {student_layer} "
            f"({zs.shape[1]} dims); {fdata.count('train')} train rows",
            file=sys.stderr,
        )
    points = sweep(fdata, dims, options, cfg, eval_split=eval_split, records=records, quiet=quiet, on_fit=on_fit)
    chosen, worst = choose_dim({p.dim: p.spectrum for p in points}, tol)
    rows = [
        {
            "H": p.dim,
            **{k: float(v) for k, v in p.metrics.items()},
            "rankme": float(p.summary["rankme"]),
            "change": worst[p.dim],
            "chosen": p.dim == chosen,
        }
        for p in points
    ]
    best = next(p for p in points if p.dim == chosen)
    record = {
        **provenance(command, data=list(tables)),
        "options": asdict(options),
        "config": cfg.record(),
        "device": str(t.data.device),
        "split_ratio": t.split_ratio,
        "split_seed": t.split_seed,
        "rows": {s: fdata.count(s) for s in ("train", "val", "test")},
        "eval_split": eval_split,
        "sweep": rows,
        "rule": f"smallest H within {tol} decades (mean |log10 sigma| difference) of every larger H",
        "best_epoch": best.result.best_epoch,
        "best_metrics": best.result.best_metrics,
        "final_metrics": best.result.final_metrics,
    }
    return BottleneckRun(points, chosen, rows, record)
