"""Synthetic paired two-modality data with a known modality-general / modality-specific ground truth.

Two generators, each reproducing the synthetic set-up of one source paper:

* :func:`synth_mfh`: the multimodal Gaussian of the Modality Focusing Hypothesis paper
  (Xue et al., ICLR 2023, "The Modality Focusing Hypothesis: Towards Understanding Crossmodal
  Knowledge Distillation"), Appendix B.2, Eq. 27, used for Fig. 2, Fig. 3 and Table 2.
* :func:`synth_orthogonal`: the completely separated data of the CIBA paper
  ("Understanding dimensional collapse in cross-modal feature distillation"), Sec. 3.4 Eq. 4,
  built as in App. D.1 (Gram-Schmidt) and, with ``orthogonalize=False``, as in App. E.6.

Both return a :class:`SynthData`: ``xa`` is the teacher-side modality (``x^a`` in MFH, ``X'`` in CIBA),
``xb`` the student-side modality (``x^b`` in MFH, ``X`` in CIBA). Arrays are sample-major
(``(N, channels)``); the papers write CIBA's matrices channel-major (``D x N``).

Seeding (both generators)
-------------------------
``SeedSequence(seed).spawn(4)`` gives four independent streams: ``[structure, train, val, test]``.
The structure stream fixes everything shared by all splits (MFH: ``delta`` and the channel positions;
CIBA: the label hyperplanes). A split is drawn from ``SeedSequence(<split>_seed)`` when that option is
given, else from the spawned child of ``seed``. Every split is drawn from its own stream only, so changing
``test_seed`` (or ``n_test``) changes the test rows and nothing else. Equal explicit split seeds give
equal raw draws for those splits (the user asked for it).

Pure NumPy; no torch or pyarrow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cmkdtool.errors import CmkdUsageError

__all__ = ["SynthData", "SynthConfigError", "synth_mfh", "synth_orthogonal"]

SPLITS: tuple[str, str, str] = ("train", "val", "test")


class SynthConfigError(CmkdUsageError, ValueError):
    """An impossible or conflicting generator option.

    Subclasses both ``ValueError`` (library callers) and ``CmkdUsageError`` (the CLI reports it as one
    line, exit status 2).
    """


@dataclass
class SynthData:
    """A generated paired data set; rows are ordered train, then val, then test.

    Attributes:
        xa: ``(N, dim_a)`` float32, teacher-side modality (``x^a`` in MFH, ``X'`` in CIBA).
        xb: ``(N, dim_b)`` float32, student-side modality (``x^b`` in MFH, ``X`` in CIBA).
        label: ``(N,)`` int64 class index.
        split: ``(N,)`` str array of ``'train' | 'val' | 'test'``.
        ids: ``(N,)`` str array, unique: ``'<split>-<index within split, 6 digits>'``.
        class_names: ``class_names[label]`` is the name of a class.
        meta: JSON-serialisable dict (plain lists / ints / floats / str / bool / None): the generator
            name, every parameter and the ground truth (see each generator).
    """

    xa: np.ndarray
    xb: np.ndarray
    label: np.ndarray
    split: np.ndarray
    ids: np.ndarray
    class_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.label.shape[0]
        for name in ("xa", "xb", "split", "ids"):
            arr = getattr(self, name)
            if arr.shape[0] != n:
                raise ValueError(f"SynthData.{name} has {arr.shape[0]} rows but label has {n}.")

    def __len__(self) -> int:
        return int(self.label.shape[0])


# --------------------------------------------------------------------------------------------------
# helpers


def _check_int(name: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SynthConfigError(f"Option {name} must be an integer, got {value!r}.")
    if int(value) < minimum:
        raise SynthConfigError(f"Option {name} must be >= {minimum}, got {int(value)}.")
    return int(value)


def _check_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise SynthConfigError(f"Option {name} must be a number, got {value!r}.")
    out = float(value)
    if not math.isfinite(out):
        raise SynthConfigError(f"Option {name} must be finite, got {out}.")
    return out


def _seed_streams(
    seed: int, train_seed: int | None, val_seed: int | None, test_seed: int | None
) -> tuple[np.random.SeedSequence, dict[str, np.random.SeedSequence]]:
    """Return ``(structure, {split: stream})`` as described in the module docstring."""
    seed = _check_int("seed", seed)
    structure, *derived = np.random.SeedSequence(seed).spawn(4)
    streams: dict[str, np.random.SeedSequence] = {}
    for split_name, given, child in zip(SPLITS, (train_seed, val_seed, test_seed), derived, strict=True):
        if given is None:
            streams[split_name] = child
        else:
            streams[split_name] = np.random.SeedSequence(_check_int(f"{split_name}_seed", given))
    return structure, streams


def _split_and_ids(sizes: dict[str, int]) -> tuple[np.ndarray, np.ndarray]:
    split = np.array([s for s in SPLITS for _ in range(sizes[s])], dtype=str)
    ids = np.array([f"{s}-{i:06d}" for s in SPLITS for i in range(sizes[s])], dtype=str)
    return split.reshape(-1), ids.reshape(-1)


def _ints(values: Any) -> list[int]:
    return [int(v) for v in values]


def _plain(params: dict[str, Any]) -> dict[str, Any]:
    """Arguments as given, with NumPy scalars turned into Python ones (JSON-serialisable)."""
    return {k: (v.item() if isinstance(v, np.generic) else v) for k, v in params.items()}


def _floats(values: Any) -> list[Any]:
    return np.asarray(values, dtype=np.float64).tolist()


# --------------------------------------------------------------------------------------------------
# MFH (Xue et al., 2023), App. B.2, Eq. 27


def synth_mfh(
    *,
    dim_a: int = 50,
    dim_b: int = 50,
    decisive: int = 20,
    gamma: float | None = None,
    n_a: int | None = None,
    n_b: int | None = None,
    overlap: int | None = None,
    hyperplane: str = "randn",
    positions: str = "random",
    n_train: int = 200,
    n_val: int = 200,
    n_test: int = 1000,
    seed: int = 0,
    train_seed: int | None = None,
    val_seed: int | None = None,
    test_seed: int | None = None,
) -> SynthData:
    """Multimodal Gaussian of the MFH paper (App. B.2, Eq. 27), extending Lopez-Paz et al. (2015).

    Construction, per sample (Eq. 27), with ``d = decisive``::

        x* ~ N(0, I_d),          y  = 1(<delta, x*> > 0)
        x^a ~ N(0, I_dim_a),     x^a[channels_a] <- x*[J1]
        x^b ~ N(0, I_dim_b),     x^b[channels_b] <- x*[J2]

    ``delta ~ N(0, I_d)`` (``hyperplane='randn'``, as in App. B.2) or all ones (``'ones'``). The decisive
    index sets are contiguous ranges of the ``d`` decisive dims: ``J1 = [0, n_a)`` and
    ``J2 = [n_a - overlap, n_a - overlap + n_b)``, so ``|J1 ∩ J2| = overlap``. Decisive dims outside
    ``J1 ∪ J2`` still enter the label but are seen by neither modality (``meta['unobserved']``).
    With the paper's definitions (App. B.2)::

        alpha = 1 - |J2| / |J1 ∪ J2|,  beta = 1 - |J1| / |J1 ∪ J2|,  gamma = |J1 ∩ J2| / |J1 ∪ J2|

    Two ways to choose ``J1, J2`` (the paper's two settings); mixing them is an error:

    * ``gamma=G`` (B.2 setting (2), "varying alpha", and Table 2's setting; ``beta = 0``): ``n_a = d``
      (the teacher sees every decisive feature) and ``n_b = overlap = round(G * d)`` (half rounds up), so
      ``J2 ⊆ J1`` and the realised ``gamma = n_b / d``, ``alpha = 1 - gamma``. Default: ``gamma=0.5``.
    * ``overlap=K`` and/or ``n_a``, ``n_b`` (B.2 setting (1), "varying gamma": ``d=20, n_a=n_b=10,
      K = 0, 2, ..., 10`` gives ``gamma = K / (20 - K) = [0, 0.11, 0.25, 0.43, 0.67, 1]`` and
      ``alpha = beta = (1 - gamma) / 2``). ``n_a`` and ``n_b`` default to ``d // 2``; ``overlap`` defaults
      to the least the sizes allow, ``max(0, n_a + n_b - d)``.

    ``positions`` chooses which channels hold the decisive features: ``'random'`` draws a sorted random
    subset of ``n_a`` channels of ``x^a`` (and ``n_b`` of ``x^b``) from ``seed``; ``'first'`` uses channels
    ``0 .. n_a - 1`` (``0 .. n_b - 1``). ``channels_a[i]`` holds decisive dim ``J1[i]``.

    Seeds: ``delta`` and the positions come from ``seed``; each split from its own stream (module
    docstring). Labels are computed from the float32-rounded ``x*`` so they are exactly reproducible from
    the stored columns.

    Returns:
        :class:`SynthData` with ``class_names = ['0', '1']`` and ``meta`` holding: ``generator='mfh'``,
        ``params`` (every argument, as given), ``mode`` (``'gamma'`` or ``'overlap'``), ``d``, ``n_a``,
        ``n_b``, ``overlap``, ``delta``, ``J1``, ``J2``, ``unobserved``, ``channels_a``, ``channels_b``,
        ``general_a`` / ``general_b`` (channels of ``xa`` / ``xb`` holding ``x*[J1 ∩ J2]``, in matching
        order, so ``xa[:, general_a] == xb[:, general_b]``), ``specific_a`` (``x*[J1 \\ J2]`` in ``xa``),
        ``specific_b`` (``x*[J2 \\ J1]`` in ``xb``), ``gamma``, ``alpha``, ``beta``, ``n`` per split,
        ``split_seeds`` and ``seeding``.

    Raises:
        SynthConfigError (a ``ValueError``): conflicting or impossible options.
    """
    params: dict[str, Any] = {
        "dim_a": dim_a, "dim_b": dim_b, "decisive": decisive, "gamma": gamma, "n_a": n_a, "n_b": n_b,
        "overlap": overlap, "hyperplane": hyperplane, "positions": positions, "n_train": n_train,
        "n_val": n_val, "n_test": n_test, "seed": seed, "train_seed": train_seed, "val_seed": val_seed,
        "test_seed": test_seed,
    }  # fmt: skip
    dim_a = _check_int("dim_a", dim_a, 1)
    dim_b = _check_int("dim_b", dim_b, 1)
    d = _check_int("decisive", decisive, 1)
    sizes = {s: _check_int(f"n_{s}", v) for s, v in zip(SPLITS, (n_train, n_val, n_test), strict=True)}
    if hyperplane not in ("randn", "ones"):
        raise SynthConfigError(f"Option hyperplane must be 'randn' or 'ones', got {hyperplane!r}.")
    if positions not in ("random", "first"):
        raise SynthConfigError(f"Option positions must be 'random' or 'first', got {positions!r}.")

    if gamma is not None:
        if n_a is not None or n_b is not None or overlap is not None:
            raise SynthConfigError(
                "Option gamma cannot be combined with n_a, n_b or overlap; give either gamma or overlap/n_a/n_b."
            )
    elif n_a is None and n_b is None and overlap is None:
        gamma = 0.5
    if gamma is not None:
        mode = "gamma"
        gamma_req = _check_float("gamma", gamma)
        if not 0.0 <= gamma_req <= 1.0:
            raise SynthConfigError(f"Option gamma must lie in [0, 1], got {gamma_req}.")
        na = d
        nb = ov = int(math.floor(gamma_req * d + 0.5))
    else:
        mode = "overlap"
        gamma_req = None
        na = _check_int("n_a", d // 2 if n_a is None else n_a)
        nb = _check_int("n_b", d // 2 if n_b is None else n_b)
        ov = _check_int("overlap", max(0, na + nb - d) if overlap is None else overlap)
        if na > d or nb > d:
            raise SynthConfigError(f"Options n_a={na} and n_b={nb} must not exceed decisive={d}.")
        if ov > min(na, nb):
            raise SynthConfigError(f"Option overlap={ov} must not exceed min(n_a, n_b)={min(na, nb)}.")
        if na + nb - ov > d:
            raise SynthConfigError(
                f"Option overlap={ov} is too small: J2 = [{na - ov}, {na - ov + nb}) leaves the decisive "
                f"dims [0, {d}); raise overlap to at least {na + nb - d} or raise decisive."
            )
        if na + nb - ov == 0:
            raise SynthConfigError("Options n_a and n_b are both 0: at least one modality needs a decisive feature.")
    if na > dim_a:
        hint = "lower decisive or raise dim_a" if mode == "gamma" else "lower n_a or raise dim_a"
        raise SynthConfigError(f"Option dim_a={dim_a} is smaller than n_a={na} decisive features; {hint}.")
    if nb > dim_b:
        hint = "lower gamma or decisive, or raise dim_b" if mode == "gamma" else "lower n_b or raise dim_b"
        raise SynthConfigError(f"Option dim_b={dim_b} is smaller than n_b={nb} decisive features; {hint}.")

    structure, streams = _seed_streams(seed, train_seed, val_seed, test_seed)
    delta_ss, pos_a_ss, pos_b_ss = structure.spawn(3)
    delta = np.random.default_rng(delta_ss).standard_normal(d)  # always drawn: 'ones' keeps positions
    if hyperplane == "ones":
        delta = np.ones(d)

    j1 = np.arange(0, na)
    j2 = np.arange(na - ov, na - ov + nb)
    if positions == "first":
        ch_a = np.arange(na)
        ch_b = np.arange(nb)
    else:
        ch_a = np.sort(np.random.default_rng(pos_a_ss).choice(dim_a, size=na, replace=False))
        ch_b = np.sort(np.random.default_rng(pos_b_ss).choice(dim_b, size=nb, replace=False))

    xa_parts, xb_parts, y_parts = [], [], []
    for s in SPLITS:
        n = sizes[s]
        xstar_ss, noise_a_ss, noise_b_ss = streams[s].spawn(3)
        xstar = np.random.default_rng(xstar_ss).standard_normal((n, d)).astype(np.float32)
        xa = np.random.default_rng(noise_a_ss).standard_normal((n, dim_a)).astype(np.float32)
        xb = np.random.default_rng(noise_b_ss).standard_normal((n, dim_b)).astype(np.float32)
        xa[:, ch_a] = xstar[:, j1]
        xb[:, ch_b] = xstar[:, j2]
        y = (xstar.astype(np.float64) @ delta > 0).astype(np.int64)
        xa_parts.append(xa)
        xb_parts.append(xb)
        y_parts.append(y)

    union = na + nb - ov
    inter = np.arange(na - ov, na)  # J1 ∩ J2
    only_a = np.arange(0, na - ov)  # J1 \ J2
    only_b = np.arange(na, na - ov + nb)  # J2 \ J1
    # position of decisive dim j in J1 is j (J1 starts at 0); in J2 it is j - (n_a - overlap)
    split_arr, ids = _split_and_ids(sizes)
    meta: dict[str, Any] = {
        "generator": "mfh",
        "paper": "Xue et al. 2023 (MFH), App. B.2 Eq. 27",
        "params": _plain(params),
        "mode": mode,
        "gamma_requested": gamma_req,
        "d": d,
        "n_a": na,
        "n_b": nb,
        "overlap": ov,
        "delta": _floats(delta),
        "J1": _ints(j1),
        "J2": _ints(j2),
        "unobserved": _ints(np.arange(union, d)),
        "channels_a": _ints(ch_a),
        "channels_b": _ints(ch_b),
        "general_dims": _ints(inter),
        "general_a": _ints(ch_a[inter]),
        "general_b": _ints(ch_b[inter - (na - ov)]),
        "specific_a": _ints(ch_a[only_a]),
        "specific_b": _ints(ch_b[only_b - (na - ov)]),
        "gamma": ov / union,
        "alpha": 1.0 - nb / union,
        "beta": 1.0 - na / union,
        "n": dict(sizes),
        "split_seeds": {"train": train_seed, "val": val_seed, "test": test_seed},
        "seeding": "structure and (when not given) split streams = SeedSequence(seed).spawn(4)",
    }
    return SynthData(
        xa=np.concatenate(xa_parts, axis=0),
        xb=np.concatenate(xb_parts, axis=0),
        label=np.concatenate(y_parts, axis=0),
        split=split_arr,
        ids=ids,
        class_names=["0", "1"],
        meta=meta,
    )


# --------------------------------------------------------------------------------------------------
# CIBA, Sec. 3.4 Eq. 4, App. D.1 / E.6


def _orthonormal_rows(m: np.ndarray) -> np.ndarray:
    """Gram-Schmidt of the centred rows of ``m`` (``r x n``, ``r < n``), scaled to squared norm ``n``.

    Each row is first centred over the samples, so the result is zero-mean *and* orthogonal: models centre
    their inputs (standardisation, biases), and orthogonality of raw but uncentred rows would not survive
    that (a deviation from App. D.1, which does not say; it is what makes Theorem 1's bound exact for
    models with biases). Computed as the QR factorisation of the centred ``m.T`` with the signs fixed so that
    ``diag(R) > 0``, which is the factorisation classical Gram-Schmidt produces (in exact arithmetic).
    """
    r, n = m.shape
    m = m - m.mean(axis=1, keepdims=True)
    q, rr = np.linalg.qr(m.T)  # q: n x r
    signs = np.sign(np.diag(rr))
    signs[signs == 0] = 1.0
    return (q * signs).T * math.sqrt(n)


def synth_orthogonal(
    *,
    dim: int = 64,
    general: int = 16,
    num_classes: int = 2,
    weight_general: float = 1.0,
    weight_specific_a: float = 1.0,
    weight_specific_b: float = 1.0,
    orthogonalize: bool = True,
    n_train: int = 2000,
    n_val: int = 500,
    n_test: int = 1000,
    seed: int = 0,
    train_seed: int | None = None,
    val_seed: int | None = None,
    test_seed: int | None = None,
) -> SynthData:
    """Completely separated data of the CIBA paper (Sec. 3.4 Eq. 4; App. D.1; App. E.6).

    Eq. 4, with ``D = dim``, ``D_g = general``, ``D_s = dim - general``::

        X' = [G; S']  (teacher, ``xa``)        X = [G; S]  (student, ``xb``)

    ``G`` (``D_g x n``) is the modality-general part on the first ``D_g`` channels of both modalities;
    ``S'`` and ``S`` (``D_s x n``) are the modality-specific parts on the remaining channels.

    Per split of ``n`` samples, ``M = [G; S'; S]`` (``D_g + 2 D_s`` rows) is drawn i.i.d. ``N(0, 1)``.
    With ``orthogonalize=True`` (App. D.1, Gram-Schmidt) the rows of ``M`` are made orthonormal as
    ``n``-vectors (QR of ``M^T`` with ``diag(R) > 0``, identical to classical Gram-Schmidt) and scaled by
    ``sqrt(n)``, so every channel has mean square exactly 1 and ``G S'^T = G S^T = S S'^T = O`` (Sec. 3.4's
    "completely separated" assumption) hold on every split to float32 precision. This couples the rows of
    a split: they are not i.i.d., and changing ``n`` changes every row of that split. It needs
    ``n >= D_g + 2 D_s`` for a non-empty split. ``orthogonalize=False`` is App. E.6's relaxation: plain
    ``N(0, 1)`` data, orthogonal only in expectation.

    Labels (a linear rule, each part's score normalised by the square root of its dimension)::

        score_c = w_g <u_c, g> / sqrt(D_g) + w_a <v_c, s'> / sqrt(D_s) + w_b <w_c, s> / sqrt(D_s)

    with ``u_c, v_c, w_c ~ N(0, I)`` fixed by ``seed`` (``w_g, w_a, w_b`` are ``weight_general``,
    ``weight_specific_a``, ``weight_specific_b``; a weight of 0, or a part of dimension 0, removes that
    term). ``num_classes=2``: one hyperplane, ``y = 1(score_0 > 0)``; ``num_classes=K>2``: ``K``
    hyperplanes, ``y = argmax_c score_c``. The paper (following Xue et al.) specifies only a synthetic
    binary classification task; this rule is the toolkit's choice. Labels are computed from the
    float32-rounded features so they are exactly reproducible from the stored columns.

    Returns:
        :class:`SynthData` with ``class_names = ['0', ..., 'K-1']`` and ``meta`` holding
        ``generator='orthogonal'``, ``params``, ``D_g``, ``D_s``, ``general_a = general_b =
        [0, ..., D_g-1]``, ``specific_a = specific_b = [D_g, ..., dim-1]`` (same channel indices, different
        content), the hyperplanes ``u`` (``H x D_g``), ``v`` and ``w`` (``H x D_s``) as nested lists with
        ``H = 1`` for binary else ``K``, ``n`` per split, ``split_seeds`` and ``seeding``.

    Raises:
        SynthConfigError (a ``ValueError``): impossible options, all-zero label rule, or a split too small
        to orthogonalise.
    """
    params: dict[str, Any] = {
        "dim": dim, "general": general, "num_classes": num_classes, "weight_general": weight_general,
        "weight_specific_a": weight_specific_a, "weight_specific_b": weight_specific_b,
        "orthogonalize": orthogonalize, "n_train": n_train, "n_val": n_val, "n_test": n_test, "seed": seed,
        "train_seed": train_seed, "val_seed": val_seed, "test_seed": test_seed,
    }  # fmt: skip
    dim = _check_int("dim", dim, 1)
    dg = _check_int("general", general)
    if dg > dim:
        raise SynthConfigError(f"Option general={dg} must not exceed dim={dim}.")
    ds = dim - dg
    k = _check_int("num_classes", num_classes, 2)
    wg = _check_float("weight_general", weight_general)
    wa = _check_float("weight_specific_a", weight_specific_a)
    wb = _check_float("weight_specific_b", weight_specific_b)
    if not isinstance(orthogonalize, (bool, np.bool_)):
        raise SynthConfigError(f"Option orthogonalize must be a bool, got {orthogonalize!r}.")
    sizes = {s: _check_int(f"n_{s}", v) for s, v in zip(SPLITS, (n_train, n_val, n_test), strict=True)}
    if (dg == 0 or wg == 0) and (ds == 0 or (wa == 0 and wb == 0)):
        raise SynthConfigError(
            "Options weight_general, weight_specific_a and weight_specific_b give every non-empty part "
            "weight 0, so every label would be equal; set a non-zero weight on a part with channels."
        )
    rows = dg + 2 * ds
    if orthogonalize:
        for s in SPLITS:
            if 0 < sizes[s] <= rows:  # centred rows span at most n - 1 dimensions
                raise SynthConfigError(
                    f"Option n_{s}={sizes[s]} is not above general + 2*(dim - general) = {rows}, so the "
                    f"parts cannot be orthogonalised; raise n_{s} to at least {rows + 1}, lower dim, or pass "
                    "orthogonalize=False."
                )

    structure, streams = _seed_streams(seed, train_seed, val_seed, test_seed)
    h = 1 if k == 2 else k
    u_ss, v_ss, w_ss = structure.spawn(3)
    u = np.random.default_rng(u_ss).standard_normal((h, dg))
    v = np.random.default_rng(v_ss).standard_normal((h, ds))
    w = np.random.default_rng(w_ss).standard_normal((h, ds))

    xa_parts, xb_parts, y_parts = [], [], []
    for s in SPLITS:
        n = sizes[s]
        m = np.random.default_rng(streams[s]).standard_normal((rows, n))
        if orthogonalize and n > 0:
            m = _orthonormal_rows(m)
        m32 = m.astype(np.float32)
        g, s_a, s_b = m32[:dg], m32[dg : dg + ds], m32[dg + ds :]
        xa_parts.append(np.ascontiguousarray(np.concatenate([g, s_a], axis=0).T))
        xb_parts.append(np.ascontiguousarray(np.concatenate([g, s_b], axis=0).T))
        score = np.zeros((h, n))
        if dg and wg:
            score += wg * (u @ g.astype(np.float64)) / math.sqrt(dg)
        if ds and wa:
            score += wa * (v @ s_a.astype(np.float64)) / math.sqrt(ds)
        if ds and wb:
            score += wb * (w @ s_b.astype(np.float64)) / math.sqrt(ds)
        y = (score[0] > 0) if k == 2 else np.argmax(score, axis=0)
        y_parts.append(np.asarray(y, dtype=np.int64))

    split_arr, ids = _split_and_ids(sizes)
    meta: dict[str, Any] = {
        "generator": "orthogonal",
        "paper": "CIBA Sec. 3.4 Eq. 4; App. D.1 (Gram-Schmidt); App. E.6 (orthogonalize=False)",
        "params": _plain(params),
        "D_g": dg,
        "D_s": ds,
        "general_a": list(range(dg)),
        "general_b": list(range(dg)),
        "specific_a": list(range(dg, dim)),
        "specific_b": list(range(dg, dim)),
        "u": _floats(u),
        "v": _floats(v),
        "w": _floats(w),
        "label_rule": "binary: 1(score_0 > 0); K > 2: argmax_c score_c; "
        "score_c = w_g <u_c,g>/sqrt(D_g) + w_a <v_c,s'>/sqrt(D_s) + w_b <w_c,s>/sqrt(D_s)",
        "n": dict(sizes),
        "split_seeds": {"train": train_seed, "val": val_seed, "test": test_seed},
        "seeding": "structure and (when not given) split streams = SeedSequence(seed).spawn(4)",
        "orthogonalization": "centred Gram-Schmidt per split" if orthogonalize else "none",
    }
    return SynthData(
        xa=np.concatenate(xa_parts, axis=0),
        xb=np.concatenate(xb_parts, axis=0),
        label=np.concatenate(y_parts, axis=0),
        split=split_arr,
        ids=ids,
        class_names=[str(c) for c in range(k)],
        meta=meta,
    )
