"""Singular value spectra: the dimensional-collapse diagnostic (CIBA, Sec. 3.5 Fig. 3 and Sec. 5.1.1 Fig. 5).

A model whose features (or weights) use only a few directions of their space has a singular value spectrum
that drops off a cliff after those directions. This module computes spectra of

- weight matrices of a checkpoint (``weight_spectra``; a weight is taken as stored, ``(out, in)``),
- features of a model's named layer over a split of a table (``feature_spectrum``; rows are samples,
  columns are features, centred),
- modality columns of a feature table (``column_spectrum``; centred),

and summarises a spectrum in a few numbers (``summarize``) and a terminal sparkline (``sparkline``).

Features and columns are streamed: their rows go chunk by chunk into a ``SpectrumAccumulator`` (one pass, TSQR
with Chan's mean correction, O(D^2 + chunk) memory, mergeable across processes); a matrix wider than
``RANDOMIZED_MIN_COLS`` gets its largest values by randomized subspace iteration instead
(``randomized_singular_values``).

All values are singular values ``sigma`` (not their squares), in float64, in descending order.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
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
#: the rule of ``summarize``'s rank tolerance, as recorded in its output: X as stored, before any centring,
#: ``||X||_F^2 = sum sigma^2`` (+ ``N ||mean||^2`` for a centred spectrum)
TOL_RULE = "eps32 * ||X||_F"
#: rows per chunk when streaming a column or a layer's outputs (8192 rows of 512 float64 values: 34 MB)
CHUNK_ROWS = 8192
#: streamed matrices with more columns than this get the randomized top-k spectrum (an exact one needs D x D)
RANDOMIZED_MIN_COLS = 16384
#: number of singular values of the randomized spectrum, and its passes over the rows after the first
RANDOMIZED_RANK = 256
RANDOMIZED_ITERS = 4


@dataclass
class Spectrum:
    """The singular values of one matrix and what that matrix was.

    ``name`` is the weight's parameter name, the layer name or the column name; ``shape`` is the
    ``(rows, cols)`` of the matrix that was decomposed (``(out, in)`` for a weight, ``(N, features)`` for
    features); ``kind`` is ``weight``, ``feature`` or ``column``; ``split`` is the split of the rows for
    features and columns (``None`` for weights). ``method`` is how the values were computed (``svd``, ``tsqr``,
    ``gram`` or ``randomized``); a ``randomized`` spectrum holds only the largest values and ``energy`` is then
    the exact ``sum sigma^2`` over all of them. ``mean_energy`` is ``N ||mean||^2`` for a centred spectrum (what
    the centring took out of ``||X||_F^2``; it sets the rank tolerance).
    """

    name: str
    sigma: np.ndarray
    shape: tuple[int, int]
    kind: str
    centered: bool
    split: str | None = None
    method: str = "svd"
    energy: float | None = None
    mean_energy: float = 0.0

    def summary(self) -> dict[str, Any]:
        return summarize(self.sigma, self.shape, energy=self.energy, mean_energy=self.mean_energy)


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


def singular_values(
    matrix: Any, center: bool = False, *, chunk_rows: int | None = None, method: str = "tsqr"
) -> np.ndarray:
    """Singular values ``sigma`` of a 2-D matrix, float64, descending (length ``min(rows, cols)``).

    ``matrix`` is one matrix (numpy array or torch tensor, any float dtype) or an iterable of chunks of its rows
    (each ``(k, D)``, numpy or torch; a generator, or a list of 2-D arrays), decomposed in float64. A weight is
    passed as stored, ``(out, in)``; features are ``(samples, features)``. ``center=True`` subtracts the column
    means first (the spectrum of the feature covariance: ``sigma_i^2 / N`` are its eigenvalues).

    Chunks, and tall matrices (more than ``2**22`` elements and at least twice as many rows as columns), go
    through ``SpectrumAccumulator`` (one pass, TSQR with Chan's mean correction, ``chunk_rows`` rows at a time:
    the accuracy of an SVD, no float64 copy of the matrix, no Gram matrix); ``chunk_rows`` forces that path for
    a matrix. ``method="gram"`` uses the cheaper co-moment accumulator instead (values below ~1e-5 sigma_max
    are not resolved). Raises ``CmkdError`` for NaN/inf values.
    """
    if _is_chunks(matrix):
        acc = SpectrumAccumulator(center, method)
        for c in matrix:
            acc.add(c)
        return acc.singular_values()
    x = _as_numpy(matrix)
    if x.ndim != 2:
        raise CmkdError(f"a spectrum needs a 2-D matrix, got shape {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise CmkdError(f"a spectrum needs a numeric matrix, got {x.dtype}")
    m, n = x.shape
    if m == 0 or n == 0:
        return np.zeros(0, dtype=np.float64)
    tall = m >= 2 * n
    if method == "tsqr" and chunk_rows is None and (m * n <= _DIRECT_LIMIT or not tall):
        if not np.isfinite(x).all():
            raise CmkdError(f"the {m} x {n} matrix has NaN/inf values; its singular values are undefined")
        a = x.astype(np.float64, copy=True)
        if center:
            a -= a.mean(axis=0)
        return np.linalg.svd(a, compute_uv=False)
    if not tall and method == "tsqr":
        raise CmkdError(f"chunked decomposition needs a tall matrix, got {m} x {n}")
    step = max(int(chunk_rows or max(CHUNK_ROWS, 4 * n)), n + 1)
    acc = SpectrumAccumulator(center, method)
    for start in range(0, m, step):
        acc.add(x[start : start + step])
    return acc.singular_values()


def summarize(
    sv: np.ndarray, shape: tuple[int, int], *, energy: float | None = None, mean_energy: float = 0.0
) -> dict[str, Any]:
    """Summary numbers of a spectrum ``sv`` (singular values sigma, descending) of a matrix of ``shape``.

    - ``n_values``: number of singular values, ``min(shape)`` (``k`` for a partial spectrum).
    - ``sigma_max``: the largest singular value (0 for an all-zero matrix).
    - ``effective_rank``: ``exp(H(p))`` with ``p_i = sigma_i / sum(sigma)`` and ``H`` the Shannon entropy in
      nats (Roy & Vetterli 2007); between 1 and ``n_values``.
    - ``rankme``: ``exp(-sum p_i log p_i)`` with ``p_i = sigma_i / ||sigma||_1 + 1e-7`` (Garrido et al. 2023,
      RankMe); equals ``effective_rank`` up to the epsilon.
    - ``rank90``, ``rank99``: the smallest ``k`` whose top-``k`` energies ``sigma_i^2`` reach 90% / 99% of
      the total ``sum sigma_i^2``.
    - ``rank_tol``: the number of ``sigma_i > tol``, with ``tol = eps(float32) * ||X||_F`` (``tol_rule``) and
      ``||X||_F^2 = sum sigma_i^2 + mean_energy`` the matrix as stored: its float32 storage error ``E`` has
      ``||E||_2 <= ||E||_F <= eps32 / 2 * ||X||_F``, and by Weyl's inequality no sigma moves by more than that
      (centring, a projection, does not make ``E`` larger), so a value below ``tol`` cannot be told from zero in
      float32. The rule does not depend on the number of rows. ``mean_energy`` is ``N ||mean||^2`` for a
      centred spectrum (0 for an uncentred one): the rounding of a column with a large mean is relative to the
      mean, not to the spread. ``tol`` is returned as well.

    ``energy`` marks ``sv`` as the largest values only (a randomized spectrum) and gives the exact total
    ``sum sigma^2`` over all of them: ``rank90``/``rank99`` are then exact when reached within the ``k``
    values, else the string ``"> k"``; ``rank_tol`` is ``">= k"`` when every computed value is above ``tol``;
    ``effective_rank`` and ``rankme`` need every value and are ``None``, with the reason in ``note``.

    An all-zero (or empty) matrix gets 0 for every rank and ``sigma_max``, never NaN.
    """
    s = np.asarray(sv, dtype=np.float64).ravel()
    n = int(s.size)
    s_max = float(s.max()) if n else 0.0
    s = np.clip(s, 0.0, None)
    total = float(np.sum(s**2)) if energy is None else max(float(energy), float(np.sum(s**2)))
    out: dict[str, Any] = {
        "n_values": n,
        "sigma_max": s_max,
        "effective_rank": 0.0,
        "rankme": 0.0,
        "rank90": 0,
        "rank99": 0,
        "rank_tol": 0,
        "tol": EPS32 * math.sqrt(total + max(0.0, float(mean_energy))),
        "tol_rule": TOL_RULE,
        "note": None,
    }
    partial = energy is not None
    if partial:
        out["effective_rank"] = out["rankme"] = None
        out["note"] = (
            f"randomized spectrum: the {n} largest of {min(shape)} values; effective_rank and rankme need every "
            "value (unavailable), rank90/rank99 count within them"
        )
    if n == 0 or s_max <= 0.0:
        return out
    if not partial:
        p = s / s.sum()
        nz = p[p > 0]
        out["effective_rank"] = float(math.exp(-float(np.sum(nz * np.log(nz)))))
        q = p + RANKME_EPS
        out["rankme"] = float(math.exp(-float(np.sum(q * np.log(q)))))
    energy_k = np.cumsum(np.sort(s)[::-1] ** 2)
    for key, frac in (("rank90", 0.90), ("rank99", 0.99)):
        # a relative slack of 1e-12 keeps e.g. energies 9:1 at exactly 90% from missing by rounding
        reached = energy_k >= frac * total * (1.0 - 1e-12)
        out[key] = int(np.argmax(reached)) + 1 if reached.any() else f"> {n}"
    out["rank_tol"] = int(np.count_nonzero(s > out["tol"]))
    if partial and out["rank_tol"] == n and n < min(shape):
        out["rank_tol"] = f">= {n}"
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


# --------------------------------------------------------------------------------------------- streaming


def _chunk_array(chunk: Any, where: str) -> np.ndarray:
    """A chunk as a float64 numpy ``(k, D)`` copy (numpy arrays and torch tensors, any float dtype)."""
    x = _as_numpy(chunk)
    if x.ndim != 2:
        raise CmkdError(f"{where}: a spectrum needs 2-D chunks (rows, columns), got shape {list(x.shape)}")
    if not np.issubdtype(x.dtype, np.floating) and not np.issubdtype(x.dtype, np.integer):
        raise CmkdError(f"{where}: a spectrum needs numeric values, got {x.dtype}")
    return x.astype(np.float64)  # always a copy: centring happens in place


def _qr_r(blocks: list[np.ndarray]) -> np.ndarray:
    """The R factor of the stacked ``blocks`` (at most ``D`` rows)."""
    return np.linalg.qr(blocks[0] if len(blocks) == 1 else np.vstack(blocks), mode="r")


class SpectrumAccumulator:
    """One pass over the rows of a matrix, chunk by chunk, to its singular values (O(D^2 + chunk) memory).

    ``add`` takes a ``(k, D)`` chunk (numpy array or torch tensor, any float dtype); ``singular_values`` gives
    the singular values of all rows seen so far (centred on their mean with ``center=True``), float64,
    descending, ``min(N, D)`` of them. NaN/inf values are an error naming ``name`` and the chunk.

    Methods:

    - ``tsqr`` (default): the ``R`` factor of the centred rows, ``R <- qr([R; X_c - m_c; sqrt(n k / (n + k))
      (mu - m_c)])`` (``m_c`` the chunk's mean, ``mu`` the mean of the ``n`` rows before it; the last row is the
      square-root form of Chan et al.'s co-moment merge), then ``svd(R)``. The accuracy of an SVD of the whole
      centred matrix in float64 (relative error ~1e-12 for values down to 1e-6 sigma_max, means ~1e3). Rows are
      first shifted by the first chunk's mean (``shift``), so the means ``mu`` and ``m_c`` are small numbers
      whose rounding stays at the level of the spread, not of the mean (without it: 4e-9 instead of 3e-12 for the
      smallest of sigmas over 6 decades with means 1e3).
    - ``gram``: the co-moment ``C <- C + (X_c - m_c)^T (X_c - m_c) + n k / (n + k) d d^T`` (``d = mu - m_c``),
      then ``sqrt(eigvalsh(C))``. About 3x cheaper; relative error ~eps64 (sigma_max / sigma_i)^2, so values
      below ~1e-5 sigma_max are not resolved. Chunks given as torch tensors are accumulated on their device
      (float64).

    Accumulators of the same kind merge (``merge``): the singular values of the union of their rows, as if one
    accumulator had seen them all, so parts of a matrix can be reduced in separate processes (``state`` and
    ``from_state`` give and take the plain ``(n, mean, R or C)`` to send).
    """

    METHODS = ("tsqr", "gram")

    def __init__(self, center: bool = True, method: str = "tsqr", name: str = "matrix") -> None:
        if method not in self.METHODS:
            raise CmkdError(f"unknown spectrum method '{method}'; choose one of {', '.join(self.METHODS)}")
        self.center, self.method, self.name = bool(center), method, name
        self.n = 0  # rows seen
        self.cols: int | None = None
        self.chunks = 0  # chunks seen (for messages)
        self.shift: np.ndarray | None = None  # float64 (D,), when centring: rows are taken as x - shift
        self.mu: np.ndarray | None = None  # float64 (D,), when centring: the mean of the rows, minus shift
        self.factor: Any = None  # tsqr: R (r x D) numpy; gram: C (D x D), numpy or a float64 torch tensor

    # ----------------------------------------------------------------------------------------- adding rows

    def _check_cols(self, d: int, what: str) -> None:
        if self.cols is None:
            self.cols = d
        elif d != self.cols:
            raise CmkdError(f"{self.name}: {what} has {d} columns, the rows before it {self.cols}")

    def add(self, chunk: Any) -> SpectrumAccumulator:
        """Take the rows of one ``(k, D)`` chunk; returns ``self``."""
        self.chunks += 1
        where = f"{self.name}, chunk {self.chunks}"
        if self.method == "gram" and hasattr(chunk, "detach"):
            return self._add_gram_torch(chunk, where)
        x = _chunk_array(chunk, where)
        k, d = x.shape
        self._check_cols(d, f"chunk {self.chunks}")
        if k == 0:
            return self
        if not np.isfinite(x).all():
            raise CmkdError(_bad_values(where, self.n, x))
        shift = m = None
        if self.center:
            shift = self.shift if self.shift is not None else x.mean(axis=0)
            x -= shift
            m = x.mean(axis=0)
            x -= m
        self._absorb(k, shift, m, x if self.method == "tsqr" else x.T @ x)
        return self

    def _add_gram_torch(self, chunk: Any, where: str) -> SpectrumAccumulator:
        import torch

        x = chunk.detach()
        if x.ndim != 2:
            raise CmkdError(f"{where}: a spectrum needs 2-D chunks (rows, columns), got shape {list(x.shape)}")
        x = x.to(torch.float64)
        k, d = int(x.shape[0]), int(x.shape[1])
        self._check_cols(d, f"chunk {self.chunks}")
        if k == 0:
            return self
        if not bool(torch.isfinite(x).all()):
            raise CmkdError(_bad_values(where, self.n, x.cpu().numpy()))
        shift = m = None
        if self.center:
            shift = self.shift if self.shift is not None else x.mean(dim=0).cpu().numpy()
            x = x - torch.as_tensor(shift, device=x.device)
            mt = x.mean(dim=0)
            x = x - mt
            m = mt.cpu().numpy()
        c = x.T @ x
        if isinstance(self.factor, np.ndarray):  # merged with a host state before: stay on the host
            c = c.cpu().numpy()
        self._absorb(k, shift, m, c)
        return self

    def _absorb(self, k: int, shift: np.ndarray | None, m: np.ndarray | None, factor: Any) -> None:
        """Merge ``k`` rows with mean ``shift + m`` and factor ``factor`` (R rows or C) into the state."""
        n = self.n
        if n == 0:
            self.n, self.shift, self.mu = k, _copy(shift), _copy(m)
            self.factor = factor if self.method == "gram" else _qr_r([factor])
            return
        if self.center:
            assert shift is not None and m is not None and self.shift is not None and self.mu is not None
            if shift is not self.shift:
                m = m + (shift - self.shift)  # the same mean, relative to this accumulator's shift
        if self.method == "tsqr":
            blocks = [self.factor, factor]
            if self.center:
                blocks.append((math.sqrt(n * k / (n + k)) * (self.mu - m))[None, :])
            self.factor = _qr_r(blocks)
        else:
            if hasattr(self.factor, "detach") != hasattr(factor, "detach"):  # one on a device, one on the host
                self.factor, factor = _host(self.factor), _host(factor)
            self.factor = self.factor + factor
            if self.center:
                dlt = self.mu - m
                corr = np.outer(dlt, dlt) * (n * k / (n + k))
                if hasattr(self.factor, "detach"):
                    import torch

                    corr = torch.as_tensor(corr, device=self.factor.device)
                self.factor = self.factor + corr
        if self.center:
            self.mu = self.mu + (m - self.mu) * (k / (n + k))
        self.n = n + k

    def merge(self, other: SpectrumAccumulator) -> SpectrumAccumulator:
        """Take every row ``other`` has seen (same ``center`` and ``method``); returns ``self``."""
        if (other.center, other.method) != (self.center, self.method):
            raise CmkdError(
                f"cannot merge a {other.method} accumulator (center={other.center}) into a {self.method} one "
                f"(center={self.center})"
            )
        if other.cols is not None:
            self._check_cols(other.cols, f"the merged accumulator '{other.name}'")
        self.chunks += other.chunks
        if other.n:
            self._absorb(other.n, other.shift, other.mu, other.factor)
        return self

    # ---------------------------------------------------------------------------------------------- state

    def state(self) -> dict[str, Any]:
        """``n``, ``cols``, ``shift``, ``mu`` (the mean is ``shift + mu``) and ``factor`` (R or C), numpy
        arrays: what a process sends to be merged (``from_state``) elsewhere."""
        return {
            "n": self.n,
            "cols": self.cols,
            "shift": _copy(self.shift),
            "mu": _copy(self.mu),
            "factor": None if self.factor is None else np.array(_host(self.factor)),
        }

    @classmethod
    def from_state(
        cls, state: Mapping[str, Any], center: bool = True, method: str = "tsqr", name: str = "matrix"
    ) -> SpectrumAccumulator:
        acc = cls(center, method, name)
        acc.n, acc.cols = int(state["n"]), state["cols"]
        acc.shift, acc.mu = _copy(state["shift"]), _copy(state["mu"])
        acc.factor = None if state["factor"] is None else np.asarray(state["factor"], dtype=np.float64)
        return acc

    # ---------------------------------------------------------------------------------------------- result

    @property
    def mean(self) -> np.ndarray | None:
        """The column means of the rows seen so far (``None`` without centring or rows)."""
        return None if self.shift is None or self.mu is None else self.shift + self.mu

    @property
    def shape(self) -> tuple[int, int]:
        """``(rows, columns)`` of the matrix seen so far."""
        return (self.n, int(self.cols or 0))

    def singular_values(self) -> np.ndarray:
        """Singular values of the rows seen so far, float64, descending, ``min(N, D)`` of them."""
        size = min(self.shape)
        out = np.zeros(size, dtype=np.float64)
        if size == 0 or self.factor is None:
            return out
        if self.method == "tsqr":
            sv = np.linalg.svd(self.factor, compute_uv=False)
        else:
            ev = np.linalg.eigvalsh(_host(self.factor))
            sv = np.sqrt(np.clip(ev, 0.0, None))[::-1]
        k = min(size, len(sv))
        out[:k] = sv[:k]
        return out


def _bad_values(where: str, before: int, x: np.ndarray) -> str:
    bad = ~np.isfinite(x)
    first = int(np.nonzero(bad.any(axis=1))[0][0])
    return (
        f"{where} (rows {before + 1}-{before + len(x)}) has {int(bad.sum())} NaN/inf values, the first in row "
        f"{before + first + 1}; the singular values are undefined"
    )


def _copy(a: Any) -> np.ndarray | None:
    return None if a is None else np.array(a, dtype=np.float64)


def _host(a: Any) -> np.ndarray:
    """A torch tensor as a host numpy array; numpy arrays unchanged."""
    return a.detach().cpu().numpy() if hasattr(a, "detach") else a


def _is_chunks(source: Any) -> bool:
    """True for an iterable of chunks; False for one matrix (a numpy array, a tensor, nested lists of numbers)."""
    if isinstance(source, np.ndarray) or hasattr(source, "detach"):
        return False
    if isinstance(source, list | tuple):
        return len(source) > 0 and all(
            (isinstance(c, np.ndarray) or hasattr(c, "detach")) and len(tuple(c.shape)) == 2 for c in source
        )
    return hasattr(source, "__iter__") or hasattr(source, "__next__")


#: the pushing form of a re-readable matrix: ``feed(sink)`` calls ``sink(chunk)`` for every chunk of rows, in order
Feed = Callable[[Callable[[Any], Any]], Any]


def feed_of(chunks: Callable[[], Iterable[Any]]) -> Feed:
    """A ``Feed`` from a function that returns a fresh iterable of chunks on each call."""

    def feed(sink: Callable[[Any], Any]) -> None:
        for c in chunks():
            sink(c)

    return feed


def _blocks(x: np.ndarray, limit: int = 1 << 22) -> Iterator[np.ndarray]:
    """Row blocks of ``x`` with at most ``limit`` elements each, as float64."""
    step = max(1, limit // max(1, x.shape[1]))
    for start in range(0, x.shape[0], step):
        yield x[start : start + step].astype(np.float64)


def randomized_singular_values(
    feed: Feed,
    k: int = RANDOMIZED_RANK,
    *,
    center: bool = True,
    niter: int = RANDOMIZED_ITERS,
    oversample: int = 10,
    seed: int = 0,
    name: str = "matrix",
) -> tuple[np.ndarray, float, tuple[int, int], np.ndarray]:
    """The ``k`` largest singular values of a matrix too wide for an exact spectrum, by randomized subspace
    iteration (Halko, Martinsson & Tropp 2011), one streamed pass over the rows per iteration.

    ``feed`` pushes the matrix's chunks (it is called ``niter + 1`` times). Pass 0 gives the row count, the mean
    and the exact total energy ``||X_c||_F^2`` (Chan's per-column merge), and ``Y = X_c^T X_c Omega`` for a
    Gaussian ``Omega`` of ``k + oversample`` columns, from uncentred sums and the correction ``-n mu (mu^T
    Omega)``. Each further pass takes ``Q = orth(Y)``, the ``R`` factor of ``X_c Q`` (a TSQR of ``k +
    oversample`` columns) and ``Y = X_c^T X_c Q``. The result is the top ``k`` singular values of ``X_c Q`` from
    the last pass: each a lower bound of the true ``sigma_i`` (``Q`` is orthonormal), converged to ~1e-6
    relative for a spectrum that decays. Returns ``(sigma, energy, (N, D), mean)``.
    """
    rng = np.random.default_rng(seed)
    state: dict[str, Any] = {"n": 0, "sum": None, "m2": None, "mean": None, "y": None, "chunks": 0}
    omega: np.ndarray | None = None

    def first(chunk: Any) -> None:
        nonlocal omega
        x = _as_numpy(chunk)
        state["chunks"] += 1
        if x.ndim != 2:
            raise CmkdError(f"{name}, chunk {state['chunks']}: a spectrum needs 2-D chunks, got {list(x.shape)}")
        d = x.shape[1]
        if omega is None:
            omega = rng.standard_normal((d, min(d, k + oversample)))
            state["sum"], state["m2"], state["mean"] = np.zeros(d), np.zeros(d), np.zeros(d)
            state["y"] = np.zeros_like(omega)
        elif d != omega.shape[0]:
            raise CmkdError(f"{name}, chunk {state['chunks']}: {d} columns, the rows before it {omega.shape[0]}")
        for b in _blocks(x):
            if not np.isfinite(b).all():
                raise CmkdError(_bad_values(f"{name}, chunk {state['chunks']}", state["n"], b))
            n, kb = state["n"], len(b)
            m = b.mean(axis=0)
            m2 = ((b - m) ** 2).sum(axis=0)
            if n:
                dlt = state["mean"] - m
                m2 = m2 + dlt**2 * (n * kb / (n + kb))
            state["m2"] += m2
            state["mean"] = state["mean"] + (m - state["mean"]) * (kb / (n + kb))
            state["sum"] += b.sum(axis=0)
            state["y"] += b.T @ (b @ omega)
            state["n"] = n + kb

    feed(first)
    n = state["n"]
    if omega is None or n == 0:
        d = 0 if omega is None else omega.shape[0]
        return np.zeros(0), 0.0, (n, d), np.zeros(d)
    d = omega.shape[0]
    mu = state["mean"] if center else np.zeros(d)
    y = state["y"] - n * np.outer(mu, mu @ omega) if center else state["y"]
    # the energy of the centred matrix is the sum of the per-column co-moments; uncentred add n mean^2
    energy = float(state["m2"].sum()) if center else float((state["m2"] + n * state["mean"] ** 2).sum())
    sv = np.zeros(0)
    for _ in range(max(1, niter)):
        q = np.linalg.qr(y)[0]
        y = np.zeros_like(q)
        r: list[np.ndarray | None] = [None]

        def step(chunk: Any, q: np.ndarray = q, y: np.ndarray = y, r: list = r) -> None:
            for b in _blocks(_as_numpy(chunk)):
                if center:
                    b -= mu
                z = b @ q
                y += b.T @ z
                r[0] = _qr_r([z] if r[0] is None else [r[0], z])

        feed(step)
        sv = np.linalg.svd(r[0], compute_uv=False) if r[0] is not None else np.zeros(0)
    top = min(k, d, n)
    out = np.zeros(top)
    out[: min(top, len(sv))] = sv[:top]
    return out, energy, (n, d), state["mean"]


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
    model: torch.nn.Module,
    data: TensorData,
    layer: str,
    split: str,
    batch_size: int = 4096,
    *,
    method: str = "tsqr",
    max_exact_cols: int = RANDOMIZED_MIN_COLS,
    rank: int = RANDOMIZED_RANK,
) -> Spectrum:
    """Spectrum of the centred features of ``layer`` over the ``split`` rows of ``data`` (``N x F``).

    The model runs ``batch_size`` rows at a time (eval mode, fp32, no gradients; ``nn.inference.map_rows``) and
    each chunk of outputs goes straight into a ``SpectrumAccumulator``: nothing ``N x F`` is built, the memory
    beyond the model and the data is O(F^2 + batch). A layer wider than ``max_exact_cols`` gets the ``rank``
    largest values by randomized subspace iteration (the model runs once per pass). Raises ``CmkdError`` for an
    unknown layer (listing the valid ones), an empty split, or NaN/inf features.
    """
    rows = split_rows(data.split, split)
    if len(rows) == 0:
        raise CmkdError(f"{data.source}: no rows in the '{split}' split; choose another --split")
    names = list(model.layer_names())
    if layer not in names:
        raise CmkdError(f"unknown layer {layer!r}; layers of this model: {', '.join(names)}")
    feed = _layer_feed(model, data, layer, rows, batch_size)
    label = f"{data.source}: features of layer '{layer}'"
    return stream_spectrum(
        layer, feed, "feature", split, cols=int(model.layer_width(layer)), label=label, method=method,
        max_exact_cols=max_exact_cols, rank=rank,
    )  # fmt: skip


def _layer_feed(model: torch.nn.Module, data: TensorData, layer: str, rows: np.ndarray, batch_size: int) -> Feed:
    """Pushes the outputs of ``layer`` on ``rows``, ``batch_size`` rows at a time, as float32 device tensors."""
    import torch

    from cmkdtool.nn.inference import LazyRows, map_rows

    idx = torch.as_tensor(rows, dtype=torch.long, device=data.device)

    def feed(sink: Callable[[Any], Any]) -> None:
        def run(r: torch.Tensor) -> None:
            _, feats = model.forward_layers(LazyRows(data.inputs, r), [layer])
            sink(feats[layer].float())

        map_rows(run, idx, model, chunk=batch_size)

    return feed


def stream_spectrum(
    name: str,
    feed: Feed,
    kind: str,
    split: str | None,
    *,
    cols: int | None = None,
    center: bool = True,
    label: str | None = None,
    method: str = "tsqr",
    max_exact_cols: int = RANDOMIZED_MIN_COLS,
    rank: int = RANDOMIZED_RANK,
) -> Spectrum:
    """The ``Spectrum`` of the rows that ``feed`` pushes (see ``Feed``), in one pass (``SpectrumAccumulator``).

    With ``cols`` (the width, when known before reading) above ``max_exact_cols``, the ``rank`` largest values
    by ``randomized_singular_values`` instead (``feed`` is then called once per pass). ``label`` names the
    matrix in errors.
    """
    label = label or name
    if cols is not None and cols > max_exact_cols:
        sv, energy, shape, mean = randomized_singular_values(feed, rank, center=center, name=label)
        mean_energy = shape[0] * float(mean @ mean) if center else 0.0
        return Spectrum(name, sv, shape, kind, center, split, "randomized", energy, mean_energy)
    acc = SpectrumAccumulator(center, method, label)
    feed(acc.add)
    mean = acc.mean
    mean_energy = acc.n * float(mean @ mean) if mean is not None else 0.0
    return Spectrum(name, acc.singular_values(), acc.shape, kind, center, split, method, None, mean_energy)


def split_mask(table: FeatureTable, which: str, ratio: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0):
    """Boolean ``(N,)`` mask of the rows of split ``which`` of ``table`` (``None`` for ``all``), from its
    ``split`` column or the id hash (``io.tables.hash_split``), without a Python object per row."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from cmkdtool.io.tables import hash_split

    if which not in SPLIT_CHOICES:
        raise CmkdError(f"unknown split '{which}'; choose one of {', '.join(SPLIT_CHOICES)}")
    if which == "all":
        return None
    t = table.table
    if "split" in t.column_names:
        col = t.column("split")
        if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
            raise CmkdError(f"{table.name}: column 'split' must be strings (train/val/test), found {col.type}")
        bad = sorted({str(v) for v in pc.unique(col).to_pylist() if v not in SPLIT_CHOICES[:3]})
        if bad:
            raise CmkdError(f"{table.name}: column 'split' has values {bad[:5]}; allowed are train, val, test")
        return np.asarray(pc.fill_null(pc.equal(col, which), False).to_numpy(zero_copy_only=False), dtype=bool)
    ids = t.column("id")
    parts = [np.zeros(0, dtype=bool)]
    for chunk in ids.chunks:
        for start in range(0, len(chunk), 65536):
            parts.append(hash_split(chunk.slice(start, 65536).to_pylist(), ratio, seed) == which)
    return np.concatenate(parts)


def masked_chunks(chunks: Iterable[Any], mask: np.ndarray | None, name: str = "the column") -> Iterator[Any]:
    """The rows of ``chunks`` (in row order) where ``mask`` is true; chunks without such rows are skipped."""
    start = 0
    for c in chunks:
        k = len(c)
        if mask is None:
            yield c
        else:
            m = mask[start : start + k]
            if len(m) != k:
                raise CmkdError(f"{name} has more rows than the table's split column ({len(mask)})")
            if m.all():
                yield c
            elif m.any():
                yield c[m]
        start += k
    if mask is not None and start != len(mask):
        raise CmkdError(f"{name} has {start} rows, the table's split column {len(mask)}")


def table_chunks(table: FeatureTable, column: str, chunk_rows: int = CHUNK_ROWS) -> Iterator[np.ndarray]:
    """A table column as float32 ``(k, D)`` numpy chunks in row order (views of the Arrow buffers when they
    are float32), ``chunk_rows`` rows at most: never the whole column as one array."""
    table.require(column)
    name = f"{table.name}: column '{column}'"
    col = table.table.column(column)
    if col.null_count:
        raise CmkdError(f"{name} has {col.null_count} null rows; drop or fill them")
    dim = int(np.prod(table.shape(column)))
    for arr in col.chunks:
        for start in range(0, len(arr), chunk_rows):
            values = arr.slice(start, chunk_rows).flatten()
            if values.null_count:
                raise CmkdError(f"{name} has null values inside rows; fill them")
            x = values.to_numpy(zero_copy_only=False)
            yield (x if x.dtype == np.float32 else x.astype(np.float32)).reshape(-1, dim)


def chunk_rows_for(cols: int) -> int:
    """Rows per streamed chunk for ``cols`` columns: ``CHUNK_ROWS``, fewer for very wide rows (<= 64 MB)."""
    return max(16, min(CHUNK_ROWS, (1 << 24) // max(1, cols)))


def column_spectrum(
    table: FeatureTable,
    column: str,
    split: str,
    split_ratio: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    *,
    chunks: Callable[[], Iterable[Any]] | None = None,
    cols: int | None = None,
    method: str = "tsqr",
    max_exact_cols: int = RANDOMIZED_MIN_COLS,
    rank: int = RANDOMIZED_RANK,
) -> Spectrum:
    """Spectrum of the centred modality ``column`` of ``table`` over its ``split`` rows (``N x D``), streamed.

    Samples with a ``shape`` are flattened. Tables without a ``split`` column are split by id hash with
    ``split_ratio`` and ``split_seed``. The rows go chunk by chunk into a ``SpectrumAccumulator``; neither the
    column nor the split's rows are copied whole. ``chunks``, when given, returns a fresh iterable of the
    column's ``(k, D)`` chunks in the table's row order (e.g. ``io.tables.iter_column_chunks`` of the file), and
    ``table`` then needs only the id and split columns (``cols``: the width, when known, for the choice of the
    randomized spectrum above ``max_exact_cols``). Raises ``CmkdError`` for a missing column, an empty split or
    NaN/inf values.
    """
    if chunks is None:
        table.require(column)
        cols = int(np.prod(table.shape(column)))
        step = chunk_rows_for(cols)

        def chunks() -> Iterable[Any]:
            return table_chunks(table, column, step)

    mask = split_mask(table, split, split_ratio, split_seed)
    if (table.num_rows if mask is None else int(mask.sum())) == 0:
        raise CmkdError(f"{table.name}: no rows in the '{split}' split; choose another --split")
    label = f"{table.name}: column '{column}'"
    source = chunks
    feed = feed_of(lambda: masked_chunks(source(), mask, label))
    return stream_spectrum(
        column, feed, "column", split, cols=cols, label=label, method=method, max_exact_cols=max_exact_cols,
        rank=rank,
    )  # fmt: skip


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
