"""Singular value spectra: the dimensional-collapse diagnostic (CIBA, Sec. 3.5 Fig. 3 and Sec. 5.1.1 Fig. 5).

A model whose features (or weights) use only a few directions of their space has a singular value spectrum
that drops off a cliff after those directions. This module computes spectra of

- weight matrices of a checkpoint (``weight_spectra``; a weight is taken as stored, ``(out, in)``),
- features of a model's named layer over a split of a table (``feature_spectrum``; rows are samples,
  columns are features, centred),
- modality columns of a feature table (``column_spectrum``; centred),

and summarises a spectrum in a few numbers (``summarize``) and a terminal sparkline (``sparkline``).

All values are singular values ``sigma`` (not their squares), in float64, in descending order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cmkdtool.errors import CmkdError

if TYPE_CHECKING:  # heavy or circular imports only for type checkers
    import torch

    from cmkdtool.data.tensors import TensorData
    from cmkdtool.io.tables import FeatureTable

#: float32 machine epsilon: weights and features are float32, so their rank is judged at that precision
EPS32 = float(np.finfo(np.float32).eps)
#: RankMe's epsilon (Garrido et al. 2023): p_k = sigma_k / ||sigma||_1 + RANKME_EPS
RANKME_EPS = 1e-7
#: sparkline floor, relative to sigma_max: values at or below it are drawn blank
SPARK_FLOOR = 1e-7
SPARK_CHARS = " ▁▂▃▄▅▆▇█"
#: matrices with more elements than this (and many more rows than columns) go through a chunked QR
_DIRECT_LIMIT = 1 << 22
SPLIT_CHOICES = ("train", "val", "test", "all")


@dataclass
class Spectrum:
    """The singular values of one matrix and what that matrix was.

    ``name`` is the weight's parameter name, the layer name or the column name; ``shape`` is the
    ``(rows, cols)`` of the matrix that was decomposed (``(out, in)`` for a weight, ``(N, features)`` for
    features); ``kind`` is ``weight``, ``feature`` or ``column``; ``split`` is the split of the rows for
    features and columns (``None`` for weights).
    """

    name: str
    sigma: np.ndarray
    shape: tuple[int, int]
    kind: str
    centered: bool
    split: str | None = None

    def summary(self) -> dict[str, Any]:
        return summarize(self.sigma, self.shape)


# --------------------------------------------------------------------------------------------- numbers


def _as_numpy(matrix: Any) -> np.ndarray:
    """A numpy view of a numpy array or a torch tensor (any device, any float dtype)."""
    if hasattr(matrix, "detach"):  # a torch tensor; bf16/fp16 have no numpy dtype
        t = matrix.detach()
        if t.is_floating_point() and t.dtype not in _numpy_float_dtypes():
            t = t.float()
        return t.cpu().numpy()
    return np.asarray(matrix)


def _numpy_float_dtypes() -> tuple:
    import torch

    return (torch.float16, torch.float32, torch.float64)


def singular_values(matrix: Any, center: bool = False, *, chunk_rows: int | None = None) -> np.ndarray:
    """Singular values ``sigma`` of a 2-D matrix, float64, descending (length ``min(rows, cols)``).

    The matrix (numpy array or torch tensor, any float dtype) is decomposed in float64. A weight is passed as
    stored, ``(out, in)``; features are ``(samples, features)``. ``center=True`` subtracts the column means
    first (the spectrum of the feature covariance: ``sigma_i^2 / N`` are its eigenvalues).

    Tall matrices (more than ``2**22`` elements and at least twice as many rows as columns) are reduced to
    their ``R`` factor by a chunked QR of ``chunk_rows`` rows at a time (same singular values, no float64 copy
    of the whole matrix and no loss of precision as a Gram matrix would have); ``chunk_rows`` forces that path.
    Raises ``CmkdError`` for NaN/inf values.
    """
    x = _as_numpy(matrix)
    if x.ndim != 2:
        raise CmkdError(f"a spectrum needs a 2-D matrix, got shape {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise CmkdError(f"a spectrum needs a numeric matrix, got {x.dtype}")
    m, n = x.shape
    if m == 0 or n == 0:
        return np.zeros(0, dtype=np.float64)
    if not np.isfinite(x).all():
        raise CmkdError(f"the {m} x {n} matrix has NaN/inf values; its singular values are undefined")
    mean = x.mean(axis=0, dtype=np.float64) if center else None
    tall = m >= 2 * n
    if chunk_rows is None and (m * n <= _DIRECT_LIMIT or not tall):
        a = x.astype(np.float64, copy=True)
        if mean is not None:
            a -= mean
        return np.linalg.svd(a, compute_uv=False)
    if not tall:
        raise CmkdError(f"chunked decomposition needs a tall matrix, got {m} x {n}")
    step = max(int(chunk_rows or max(8192, 4 * n)), n + 1)
    r: np.ndarray | None = None
    for start in range(0, m, step):
        block = x[start : start + step].astype(np.float64)
        if mean is not None:
            block -= mean
        if r is not None:
            block = np.vstack([r, block])
        r = np.linalg.qr(block, mode="r")
    assert r is not None
    sv = np.linalg.svd(r, compute_uv=False)
    out = np.zeros(n, dtype=np.float64)  # R may have fewer rows than n only when m < n, excluded above
    out[: len(sv)] = sv
    return out


def summarize(sv: np.ndarray, shape: tuple[int, int]) -> dict[str, Any]:
    """Summary numbers of a spectrum ``sv`` (singular values sigma, descending) of a matrix of ``shape``.

    - ``n_values``: number of singular values, ``min(shape)``.
    - ``sigma_max``: the largest singular value (0 for an all-zero matrix).
    - ``effective_rank``: ``exp(H(p))`` with ``p_i = sigma_i / sum(sigma)`` and ``H`` the Shannon entropy in
      nats (Roy & Vetterli 2007); between 1 and ``n_values``.
    - ``rankme``: ``exp(-sum p_i log p_i)`` with ``p_i = sigma_i / ||sigma||_1 + 1e-7`` (Garrido et al. 2023,
      RankMe); equals ``effective_rank`` up to the epsilon.
    - ``rank90``, ``rank99``: the smallest ``k`` whose top-``k`` energies ``sigma_i^2`` reach 90% / 99% of
      the total ``sum sigma_i^2``.
    - ``rank_tol``: the number of ``sigma_i > tol``, with ``tol = sigma_max * max(shape) * eps(float32)``
      (numpy ``matrix_rank``'s rule, with the float32 epsilon 1.19e-7 because weights and features are
      float32); ``tol`` is returned as well.

    An all-zero (or empty) matrix gets 0 for every rank and ``sigma_max``, never NaN.
    """
    s = np.asarray(sv, dtype=np.float64).ravel()
    n = int(s.size)
    s_max = float(s.max()) if n else 0.0
    out: dict[str, Any] = {
        "n_values": n,
        "sigma_max": s_max,
        "effective_rank": 0.0,
        "rankme": 0.0,
        "rank90": 0,
        "rank99": 0,
        "rank_tol": 0,
        "tol": s_max * max(shape) * EPS32 if n else 0.0,
    }
    if n == 0 or s_max <= 0.0:
        return out
    s = np.clip(s, 0.0, None)
    p = s / s.sum()
    nz = p[p > 0]
    out["effective_rank"] = float(math.exp(-float(np.sum(nz * np.log(nz)))))
    q = p + RANKME_EPS
    out["rankme"] = float(math.exp(-float(np.sum(q * np.log(q)))))
    energy = np.cumsum(np.sort(s)[::-1] ** 2)
    total = energy[-1]
    for key, frac in (("rank90", 0.90), ("rank99", 0.99)):
        # a relative slack of 1e-12 keeps e.g. energies 9:1 at exactly 90% from missing by rounding
        out[key] = int(np.argmax(energy >= frac * total * (1.0 - 1e-12))) + 1
    out["rank_tol"] = int(np.count_nonzero(s > out["tol"]))
    return out


def sparkline(sv: np.ndarray, width: int = 40, floor: float = SPARK_FLOOR) -> str:
    """The spectrum as ``width`` unicode block characters, highest (left) to lowest (right).

    Each column shows ``log10(sigma)`` between ``log10(floor * sigma_max)`` (blank) and ``log10(sigma_max)``
    (a full block); with more values than columns a column shows the mean log value of its bin, with fewer the
    values are repeated. A dimensional collapse is a cliff: full blocks, then blanks or low bars. An empty or
    all-zero spectrum is all blanks.
    """
    if width < 1:
        raise ValueError("sparkline width must be at least 1")
    s = np.asarray(sv, dtype=np.float64).ravel()
    if s.size == 0 or not (s.max() > 0):
        return " " * width
    top = float(s.max())
    lo, hi = math.log10(top * floor), math.log10(top)
    logs = np.log10(np.clip(s, top * floor, None))
    n = s.size
    if n >= width:
        edges = np.linspace(0, n, width + 1).round().astype(int)
        cols = np.array([logs[a:b].mean() for a, b in zip(edges[:-1], edges[1:], strict=True)])
    else:
        cols = logs[(np.arange(width) * n) // width]
    level = (cols - lo) / (hi - lo)
    idx = np.clip(np.ceil(level * (len(SPARK_CHARS) - 1) - 1e-9), 0, len(SPARK_CHARS) - 1).astype(int)
    return "".join(SPARK_CHARS[i] for i in idx)


# --------------------------------------------------------------------------------------------- sources


def _is_matrix(t: Any) -> bool:
    """A floating tensor with 2 or more dimensions (biases, normalisation and BatchNorm statistics are 1-D)."""
    ndim = len(tuple(t.shape))
    if ndim < 2:
        return False
    if hasattr(t, "is_floating_point"):
        return bool(t.is_floating_point())
    return bool(np.issubdtype(np.asarray(t).dtype, np.floating))


def matrix_weights(tensors: Mapping[str, Any]) -> dict[str, tuple[int, ...]]:
    """Name -> shape of the floating tensors with 2 or more dimensions (weights; buffers and biases skipped)."""
    return {k: tuple(int(d) for d in v.shape) for k, v in tensors.items() if _is_matrix(v)}


def weight_spectra(tensors: Mapping[str, Any], layer: str | None = None) -> list[Spectrum]:
    """Spectra of a checkpoint's weight matrices, uncentred, in state-dict order.

    Every floating tensor with 2 or more dimensions is used (1-D biases, normalisation statistics and
    BatchNorm running statistics are skipped); a kernel with more than 2 dimensions is taken as
    ``(out, in * k...)``. With ``layer``, only that one: a parameter name (``encoders.xb.0.weight``) or a
    module name (``encoders.xb.0``, meaning its ``.weight``). Raises ``CmkdError`` naming the valid ones.
    """
    mats = matrix_weights(tensors)
    if layer is not None:
        name = layer if layer in tensors else f"{layer}.weight" if f"{layer}.weight" in tensors else None
        if name is None or name not in mats:
            have = ", ".join(mats) or "none"
            if name is not None:
                shape = list(tensors[name].shape)
                raise CmkdError(f"'{layer}' is a {len(shape)}-D tensor {shape}, not a weight matrix; matrices: {have}")
            raise CmkdError(f"no weight '{layer}'; weight matrices: {have}")
        mats = {name: mats[name]}
    out = []
    for name, shape in mats.items():
        mat = _as_numpy(tensors[name]).reshape(shape[0], -1)
        try:
            sv = singular_values(mat)
        except CmkdError as e:
            raise CmkdError(f"weight '{name}': {e}") from e
        out.append(Spectrum(name, sv, (int(mat.shape[0]), int(mat.shape[1])), "weight", False))
    return out


def split_rows(split: np.ndarray, which: str) -> np.ndarray:
    """Row indices (int64) of split ``which`` (``train``, ``val``, ``test``, or ``all``)."""
    if which not in SPLIT_CHOICES:
        raise CmkdError(f"unknown split '{which}'; choose one of {', '.join(SPLIT_CHOICES)}")
    if which == "all":
        return np.arange(len(split), dtype=np.int64)
    return np.nonzero(np.asarray(split) == which)[0].astype(np.int64)


def layer_features(
    model: torch.nn.Module, data: TensorData, layer: str, rows: np.ndarray, batch_size: int = 4096
) -> np.ndarray:
    """Outputs of ``layer`` (see ``CmkdModel.layer_names``) on ``rows`` of ``data``, float32 ``(N, F)``.

    Runs in eval mode, fp32, under ``no_grad``, ``batch_size`` rows at a time on ``data``'s device
    (``engine.inference.predict_layers``), and returns them on the host.
    """
    import torch

    from cmkdtool.engine.inference import predict_layers

    idx = torch.as_tensor(rows, dtype=torch.long, device=data.device)
    return predict_layers(model, data, idx, [layer], batch_size=batch_size)[layer].cpu().numpy()


def feature_spectrum(
    model: torch.nn.Module, data: TensorData, layer: str, split: str, batch_size: int = 4096
) -> Spectrum:
    """Spectrum of the centred features of ``layer`` over the ``split`` rows of ``data`` (``N x F``).

    Raises ``CmkdError`` for an unknown layer (listing the valid ones), an empty split, or NaN/inf features.
    """
    rows = split_rows(data.split, split)
    if len(rows) == 0:
        raise CmkdError(f"{data.source}: no rows in the '{split}' split; choose another --split")
    x = layer_features(model, data, layer, rows, batch_size)
    try:
        sv = singular_values(x, center=True)
    except CmkdError as e:
        raise CmkdError(f"{data.source}: features of layer '{layer}': {e}") from e
    return Spectrum(layer, sv, (int(x.shape[0]), int(x.shape[1])), "feature", True, split)


def column_spectrum(
    table: FeatureTable,
    column: str,
    split: str,
    split_ratio: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
) -> Spectrum:
    """Spectrum of the centred modality ``column`` of ``table`` over its ``split`` rows (``N x D``).

    Samples with a ``shape`` are flattened. Tables without a ``split`` column are split by id hash with
    ``split_ratio`` and ``split_seed``. Raises ``CmkdError`` for a missing column or an empty split.
    """
    x = table.array(column)
    rows = split_rows(table.split_array(split_ratio, split_seed), split)
    if len(rows) == 0:
        raise CmkdError(f"{table.name}: no rows in the '{split}' split; choose another --split")
    x = x[rows]
    return Spectrum(column, singular_values(x, center=True), (int(x.shape[0]), int(x.shape[1])), "column", True, split)


def plot_spectra(path: str, labels: list[str], sigmas: list) -> None:
    """Log singular value against its 1-based index, one line per input (CIBA Fig. 3 / Fig. 5)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from cmkdtool.io.atomic import atomic_path

    fig = Figure(figsize=(7, 4.5), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = False
    for label, sv in zip(labels, sigmas, strict=True):
        y = np.where(sv > 0, sv, np.nan)  # zeros have no logarithm: the line stops there
        if np.isfinite(y).any():
            ax.plot(np.arange(1, len(sv) + 1), y, marker="." if len(sv) <= 64 else None, label=label)
            drawn = True
    if drawn:
        ax.set_yscale("log")
        ax.legend(fontsize="small")
    ax.set_xlabel("singular value index (descending)")
    ax.set_ylabel("singular value σ (log scale)")
    ax.set_title("Singular value spectrum")
    ax.grid(True, which="major", alpha=0.3)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")


def plot_bottleneck_spectra(path: str, spectra: list[tuple[int, np.ndarray]], chosen: int) -> None:
    """log10 singular values of the decoded outputs per bottleneck dimension H (CIBA Fig. 5b) to a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from cmkdtool.io.atomic import atomic_path

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    colors = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(spectra)))
    for color, (dim, spectrum) in zip(colors, spectra, strict=True):
        sv = np.maximum(spectrum, 1e-12)
        ax.plot(
            np.arange(1, len(sv) + 1),
            np.log10(sv),
            color=color,
            lw=2.4 if dim == chosen else 1.2,
            label=f"H = {dim}" + (" (chosen)" if dim == chosen else ""),
        )
    ax.set_xlabel("singular value index")
    ax.set_ylabel(r"$\log_{10}\ \sigma_i$ of the decoded $\hat z$")
    ax.set_title("Bottleneck output spectrum per H (CIBA Fig. 5b)", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=130, format="png")
    plt.close(fig)
