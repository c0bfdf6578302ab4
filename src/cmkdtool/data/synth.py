"""Synthetic paired multimodal data with a known ground truth.

Three generators, each reproducing the synthetic set-up of (or a setting in) one source paper:

* :func:`synth_mfh`: the multimodal Gaussian of the Modality Focusing Hypothesis paper
  (Xue et al., ICLR 2023, "The Modality Focusing Hypothesis: Towards Understanding Crossmodal
  Knowledge Distillation"), Appendix B.2, Eq. 27, used for Fig. 2, Fig. 3 and Table 2.
* :func:`synth_orthogonal`: the completely separated data of the CIBA paper
  ("Understanding dimensional collapse in cross-modal feature distillation"), Sec. 3.4 Eq. 4,
  built as in App. D.1 (Gram-Schmidt) and, with ``orthogonalize=False``, as in App. E.6.
* :func:`synth_spoof`: RGB, depth and IR face images, bona fide or print / replay presentation attacks: a
  small analogue of CASIA-SURF for the OS-MD paper ("One-stage Modality Distillation for Incomplete
  Multimodal Learning"), Table 1 (RGB-D) and Table 3 (RGB-IR). It returns a :class:`SpoofData`.

The first two return a :class:`SynthData`: ``xa`` is the teacher-side modality (``x^a`` in MFH, ``X'`` in
CIBA), ``xb`` the student-side modality (``x^b`` in MFH, ``X`` in CIBA). Arrays are sample-major
(``(N, channels)``); the papers write CIBA's matrices channel-major (``D x N``).

Seeding (all generators)
------------------------
``SeedSequence(seed).spawn(4)`` gives four independent streams: ``[structure, train, val, test]``.
The structure stream fixes everything shared by all splits (MFH: ``delta`` and the channel positions;
CIBA: the label hyperplanes; spoof: nothing, it is unused). A split is drawn from
``SeedSequence(<split>_seed)`` when that option is given, else from the spawned child of ``seed``. Every
split is drawn from its own stream only, so changing ``test_seed`` (or ``n_test``) changes the test rows and
nothing else. Equal explicit split seeds give equal raw draws for those splits (the user asked for it).

Pure NumPy; no torch or pyarrow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from cmkdtool.errors import CmkdUsageError

__all__ = ["SpoofData", "SynthData", "SynthConfigError", "synth_mfh", "synth_orthogonal", "synth_spoof"]

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


# --------------------------------------------------------------------------------------------------
# Face anti-spoofing images (OS-MD Table 1 / Table 3 analogue; CASIA-SURF-like RGB, depth and IR)

ATTACK_TYPES: tuple[str, str, str] = ("bona_fide", "print", "replay")
SPOOF_CLASS_NAMES: list[str] = ["attack", "bona_fide"]

#: The constants of :func:`synth_spoof`'s generative model, recorded in ``meta['model']``. Lengths are in units
#: of the image grid, which spans ``[-1, 1]`` along both axes; ``[lo, hi]`` is a per-row ``U(lo, hi)`` draw.
SPOOF_MODEL: dict[str, Any] = {
    "face_center": [-0.15, 0.15],  # face centre, each coordinate
    "face_scale": [0.55, 0.8],  # vertical semi-axis of the face ellipse
    "face_aspect": 0.78,  # horizontal / vertical semi-axis
    "face_roll_deg": [-20.0, 20.0],  # in-plane rotation
    "face_yaw": [-0.15, 0.15],  # horizontal nose offset, face-normalised
    "face_relief": [0.8, 1.2],  # height multiplier
    "face_height": 0.55,  # height = face_height * scale * relief * relative height (a dome of 1 at the centre)
    "nose": 0.35,  # nose bump, relative height
    "eye_socket": 0.12,  # eye sockets, relative depth
    "skin_light": [0.90, 0.74, 0.62],  # skin albedo = (1 - t) skin_light + t skin_dark + N(0, 0.02^2), t ~ U(0, 1)
    "skin_dark": [0.42, 0.28, 0.20],
    "skin_jitter": 0.02,
    "eye_albedo": [0.12, 0.10, 0.09],
    "mouth_albedo": [0.62, 0.25, 0.25],
    "light_z": [0.6, 1.0],  # z component of the unit light direction; azimuth ~ U(0, 2 pi)
    "ambient": [0.3, 0.5],
    "background": [0.15, 0.85],  # background colour, each channel
    "background_gradient": [-0.08, 0.08],  # slope along x and along y, each channel
    "exposure": [0.85, 1.15],
    "rgb_noise": 0.02,  # standard deviation of the sensor noise
    "face_level": [0.3, 0.5],  # bona fide depth = face_level + depth_scale * height on the face
    "depth_scale": 0.6,
    "depth_background": 0.04,  # bona fide depth off the face (far away)
    "medium_level": [0.35, 0.65],  # attack depth = medium_level + tilt_x x + tilt_y y (+ bend, print only)
    "medium_tilt": [-0.1, 0.1],
    "print_bend": [0.0, 0.12],  # bend * (1 - (cos a x + sin a y)^2), a ~ U(0, pi): a slightly curved sheet
    "depth_noise": 0.015,
    "print_blur_sigma": 1.0,  # pixels; print rgb = mix(picture, blurred picture, v)
    "print_contrast_loss": 0.4,  # contrast factor 1 - 0.4 v around each channel's mean
    "print_cast": [0.10, 0.04, -0.14],  # colour cast c ~ N(print_cast, 0.03^2): rgb * (1 + v c)
    "print_cast_jitter": 0.03,
    "replay_moire": 0.12,  # moire amplitude at v = 1
    "replay_moire_period": [2.2, 4.0],  # pixels; orientation ~ U(0, pi), phase ~ U(0, 2 pi), +2 pi/3 per channel
    "replay_tint": [-0.04, 0.0, 0.08],  # rgb * (1 + v tint) + v glow
    "replay_glow": 0.06,
    "ir_skin": 0.8,  # bona fide IR = gain * n_z * (ir_skin - ir_eye * eye weight) on the face
    "ir_eye": 0.3,
    "ir_background": 0.05,
    "ir_print": [0.3, 0.5],  # paper: gain * n_z * (0.3 + 0.5 luminance of the picture)
    "ir_replay": [0.08, 0.12],  # screen: gain * (0.08 + 0.12 luminance of the picture)
    "ir_gain": [0.8, 1.1],
    "ir_noise": 0.02,
}


@dataclass
class SpoofData:
    """A generated face anti-spoofing image set; rows are ordered train, then val, then test.

    Attributes:
        rgb: ``(N, 3, H, W)`` float32 in ``[0, 1]``, the colour image (OS-MD's student modality).
        depth: ``(N, 1, H, W)`` float32 in ``[0, 1]``, closer is brighter (OS-MD's privileged modality).
        ir: ``(N, 1, H, W)`` float32 in ``[0, 1]``, near infrared; None when not generated.
        label: ``(N,)`` int64, ``1`` = bona fide (a live face), ``0`` = presentation attack.
        attack_type: ``(N,)`` str array of ``'bona_fide' | 'print' | 'replay'``.
        split: ``(N,)`` str array of ``'train' | 'val' | 'test'``.
        ids: ``(N,)`` str array, unique: ``'<split>-<index within split, 6 digits>'``.
        class_names: ``['attack', 'bona_fide']``.
        meta: JSON-serialisable dict: the generator name, every parameter and the ground truth.
    """

    rgb: np.ndarray
    depth: np.ndarray
    ir: np.ndarray | None
    label: np.ndarray
    attack_type: np.ndarray
    split: np.ndarray
    ids: np.ndarray
    class_names: list[str]
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = self.label.shape[0]
        for name in ("rgb", "depth", "ir", "attack_type", "split", "ids"):
            arr = getattr(self, name)
            if arr is not None and arr.shape[0] != n:
                raise ValueError(f"SpoofData.{name} has {arr.shape[0]} rows but label has {n}.")

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def images(self) -> dict[str, np.ndarray]:
        """The image columns by name: ``rgb``, ``depth`` and, when generated, ``ir``."""
        out = {"rgb": self.rgb, "depth": self.depth}
        if self.ir is not None:
            out["ir"] = self.ir
        return out


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur of the last two axes (radius ``ceil(2 sigma)``, mirrored borders)."""
    r = max(1, math.ceil(2 * sigma))
    k = np.exp(-(np.arange(-r, r + 1) ** 2) / (2 * sigma**2))
    k = (k / k.sum()).astype(x.dtype)
    h, w = x.shape[-2:]
    p = np.pad(x, [(0, 0)] * (x.ndim - 2) + [(r, r), (r, r)], mode="symmetric")
    rows = sum(k[i] * p[..., i : i + h, :] for i in range(2 * r + 1))
    return sum(k[i] * rows[..., i : i + w] for i in range(2 * r + 1))


def _normals(height: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Unit surface normal ``(n_x, n_y, n_z)`` of height maps ``(n, H, W)`` over the ``[-1, 1]`` grid."""
    step = 2.0 / size
    gy, gx = np.gradient(height, step, step, axis=(1, 2))
    inv = 1.0 / np.sqrt(gx * gx + gy * gy + 1.0)
    return -gx * inv, -gy * inv, inv


def _draw(rng: np.random.Generator, bounds: Any, n: int, *shape: int) -> np.ndarray:
    """``U(bounds)`` per row, float32, shaped ``(n, *shape)`` (trailing ones broadcast over the pixels)."""
    lo, hi = bounds
    return rng.uniform(lo, hi, size=(n, *shape)).astype(np.float32)


def _col(values: Any) -> np.ndarray:
    """A per-channel constant shaped ``(1, C, 1, 1)``."""
    return np.asarray(values, dtype=np.float32)[None, :, None, None]


def _spoof_split(n: int, ss: np.random.SeedSequence, size: int, ratio: float, v: float, with_ir: bool) -> tuple:
    """One split: ``(rgb, depth, ir, kind)`` with ``kind`` 0 bona fide, 1 print, 2 replay.

    Every random draw is made for every row, whatever its label, ``ratio``, ``v`` and ``with_ir``, from child
    streams of ``ss`` in a fixed order, so each of these options changes only what it names.
    """
    m = SPOOF_MODEL
    f32 = np.float32
    lab_ss, geo_ss, look_ss, med_ss, art_ss, noise_ss = ss.spawn(6)
    grid = ((2.0 * np.arange(size) + 1.0) / size - 1.0).astype(f32)  # pixel centres in (-1, 1)
    xx, yy = grid[None, None, :], grid[None, :, None]  # x to the right, y downwards

    # labels: a seeded order of the rows; its first round(ratio * n) are attacks, alternately print and replay
    n_att = int(math.floor(ratio * n + 0.5))
    order = np.random.default_rng(lab_ss).permutation(n)
    kind = np.zeros(n, dtype=np.int64)
    kind[order[:n_att]] = 1 + np.arange(n_att) % 2

    # the face: a live face (bona fide) or the face in the attack's picture
    g = np.random.default_rng(geo_ss)
    cx, cy = _draw(g, m["face_center"], n, 1, 1), _draw(g, m["face_center"], n, 1, 1)
    scale = _draw(g, m["face_scale"], n, 1, 1)
    roll = np.deg2rad(_draw(g, m["face_roll_deg"], n, 1, 1))
    yaw = _draw(g, m["face_yaw"], n, 1, 1)
    relief = _draw(g, m["face_relief"], n, 1, 1)
    cos, sin = np.cos(roll), np.sin(roll)
    p = (cos * (xx - cx) + sin * (yy - cy)) / (m["face_aspect"] * scale)  # face coordinates: the face is r < 1
    q = (cos * (yy - cy) - sin * (xx - cx)) / scale
    r2 = p * p + q * q
    mask = 1.0 / (1.0 + np.exp((np.sqrt(r2) - 1.0) / f32(0.04)))  # soft face outline
    dome = np.sqrt(np.clip(1.0 - r2, 0.0, None))
    on_face = (r2 < 1.0).astype(f32)
    nose = np.exp(-((p - yaw) ** 2 / f32(2 * 0.12**2) + (q - 0.1) ** 2 / f32(2 * 0.22**2)))
    eyes = np.exp(-((np.abs(p) - 0.38) ** 2 + (q + 0.28) ** 2) / f32(2 * 0.13**2))
    mouth = np.exp(-(p * p / f32(2 * 0.25**2) + (q - 0.52) ** 2 / f32(2 * 0.08**2)))
    height = (m["face_height"] * scale * relief) * (dome + (m["nose"] * nose - m["eye_socket"] * eyes) * on_face)
    fnx, fny, fnz = _normals(height, size)

    # the picture: Lambertian skin with eyes and mouth under a random light, over a random background
    a = np.random.default_rng(look_ss)
    tone = _draw(a, (0.0, 1.0), n, 1, 1, 1)
    skin = (1 - tone) * _col(m["skin_light"]) + tone * _col(m["skin_dark"])
    skin = skin + a.normal(0.0, m["skin_jitter"], size=(n, 3, 1, 1)).astype(f32)
    light_z = _draw(a, m["light_z"], n, 1, 1)
    azimuth = _draw(a, (0.0, 2 * math.pi), n, 1, 1)
    light_xy = np.sqrt(1.0 - light_z * light_z)
    ambient = _draw(a, m["ambient"], n, 1, 1)
    bg = _draw(a, m["background"], n, 3, 1, 1)
    bg = bg + _draw(a, m["background_gradient"], n, 3, 1, 1) * xx + _draw(a, m["background_gradient"], n, 3, 1, 1) * yy
    exposure = _draw(a, m["exposure"], n, 1, 1, 1)
    w_eye = (np.clip(1.3 * eyes, 0.0, 1.0) * on_face)[:, None]
    w_mouth = (0.7 * mouth * on_face)[:, None]
    albedo = skin * (1 - w_eye - w_mouth) + w_eye * _col(m["eye_albedo"]) + w_mouth * _col(m["mouth_albedo"])
    lambert = np.clip(light_xy * (np.cos(azimuth) * fnx + np.sin(azimuth) * fny) + light_z * fnz, 0.0, None)
    shading = (ambient + (1 - ambient) * lambert)[:, None]
    face = mask[:, None]
    picture = exposure * (face * albedo * shading + (1 - face) * bg)  # (n, 3, H, W)

    # depth: the face over a far background, or the attack medium (a tilted plane; print: slightly bent)
    md = np.random.default_rng(med_ss)
    face_level = _draw(md, m["face_level"], n, 1, 1)
    level = _draw(md, m["medium_level"], n, 1, 1)
    tilt_x, tilt_y = _draw(md, m["medium_tilt"], n, 1, 1), _draw(md, m["medium_tilt"], n, 1, 1)
    bend = _draw(md, m["print_bend"], n, 1, 1) * (kind == 1)[:, None, None]
    bend_axis = _draw(md, (0.0, math.pi), n, 1, 1)
    ir_gain = _draw(md, m["ir_gain"], n, 1, 1)
    along = np.cos(bend_axis) * xx + np.sin(bend_axis) * yy
    medium = level + tilt_x * xx + tilt_y * yy + bend * (1.0 - along * along)
    live_depth = mask * (face_level + m["depth_scale"] * height) + (1 - mask) * m["depth_background"]
    depth = np.where((kind == 0)[:, None, None], live_depth, medium)[:, None]

    # rgb: the picture as is (bona fide: the live face), or recaptured with artefacts of strength v
    ar = np.random.default_rng(art_ss)
    cast = _col(m["print_cast"]) + ar.normal(0.0, m["print_cast_jitter"], size=(n, 3, 1, 1)).astype(f32)
    period = _draw(ar, m["replay_moire_period"], n, 1, 1, 1)
    angle = _draw(ar, (0.0, math.pi), n, 1, 1, 1)
    phase = _draw(ar, (0.0, 2 * math.pi), n, 1, 1, 1)
    rgb = picture.copy()
    pr = np.nonzero(kind == 1)[0]
    if pr.size and v > 0:  # print: blur, contrast loss, colour cast of the paper and ink
        x = (1 - v) * picture[pr] + v * _blur(picture[pr], m["print_blur_sigma"])
        mean = x.mean(axis=(2, 3), keepdims=True)
        x = mean + (1 - m["print_contrast_loss"] * v) * (x - mean)
        rgb[pr] = x * (1 + v * cast[pr])
    rp = np.nonzero(kind == 2)[0]
    if rp.size and v > 0:  # replay: moire fringes (the sub-pixels shift their phase), a blue tint and glow
        pix = np.arange(size, dtype=f32)
        wave = np.cos(angle[rp]) * pix[None, None, None, :] + np.sin(angle[rp]) * pix[None, None, :, None]
        moire = np.sin(f32(2 * math.pi) * wave / period[rp] + phase[rp] + _col([0.0, 2 * math.pi / 3, 4 * math.pi / 3]))
        x = picture[rp] + (v * m["replay_moire"]) * moire
        rgb[rp] = x * (1 + v * _col(m["replay_tint"])) + v * m["replay_glow"]

    # sensor noise, drawn rgb, depth, ir in this order (so --no-ir changes nothing else)
    nz = np.random.default_rng(noise_ss)
    rgb = rgb + f32(m["rgb_noise"]) * nz.standard_normal(rgb.shape, dtype=f32)
    depth = depth + f32(m["depth_noise"]) * nz.standard_normal(depth.shape, dtype=f32)
    ir = None
    if with_ir:  # an active near-infrared light at the camera: shading n_z; screens emit no IR
        lum = np.clip(0.299 * picture[:, 0] + 0.587 * picture[:, 1] + 0.114 * picture[:, 2], 0.0, 1.0)
        live = mask * (m["ir_skin"] - m["ir_eye"] * w_eye[:, 0]) * fnz + (1 - mask) * m["ir_background"]
        paper = (m["ir_print"][0] + m["ir_print"][1] * lum) * _normals(medium / m["depth_scale"], size)[2]
        screen = m["ir_replay"][0] + m["ir_replay"][1] * lum
        k = kind[:, None, None]
        ir = (ir_gain * np.where(k == 1, paper, np.where(k == 2, screen, live)))[:, None]
        ir = np.clip(ir + f32(m["ir_noise"]) * nz.standard_normal(ir.shape, dtype=f32), 0.0, 1.0).astype(f32)
    rgb = np.clip(rgb, 0.0, 1.0).astype(f32)
    depth = np.clip(depth, 0.0, 1.0).astype(f32)
    return rgb, depth, ir, kind


def synth_spoof(
    *,
    size: int = 16,
    attack_ratio: float = 0.5,
    attack_visibility: float = 0.3,
    ir: bool = True,
    n_train: int = 1200,
    n_val: int = 400,
    n_test: int = 400,
    seed: int = 0,
    train_seed: int | None = None,
    val_seed: int | None = None,
    test_seed: int | None = None,
) -> SpoofData:
    """RGB-D(-IR) face anti-spoofing images: bona fide faces and print / replay presentation attacks.

    A small analogue of CASIA-SURF for the OS-MD paper's Table 1 (RGB-D; depth privileged, RGB at test time)
    and Table 3 (RGB-IR). Images are ``size x size``, values in ``[0, 1]``; the grid spans ``[-1, 1]``.
    Constants are :data:`SPOOF_MODEL`; ``[lo, hi]`` below means a per-row uniform draw.

    * **Bona fide** (label 1): a face-like 3-D surface, an ellipse of random centre, size and roll whose
      height is a dome (``sqrt(1 - r^2)``) plus a nose bump minus eye sockets. ``depth`` = its height map
      (scaled, over a far background at 0.04); ``rgb`` = a skin-tone albedo with dark eyes and a red mouth,
      Lambert-shaded under a random light direction with ambient light, over a random background colour with a
      gradient, times a random exposure; ``ir`` = grey skin shaded by an IR light at the camera (``n_z``).
    * **Attacks** (label 0): the picture of another face drawn exactly like a bona fide ``rgb``, shown on a
      medium that fills the frame: ``print`` (paper, possibly slightly bent) or ``replay`` (a flat screen).
      ``depth`` = a tilted plane (plus the bend for print), with no face relief. ``rgb`` = the picture
      with recapture artefacts whose strength is ``v = attack_visibility``: print blends the picture with its
      Gaussian blur (weight ``v``), scales its contrast by ``1 - 0.4 v`` and casts a colour (``x (1 + v c)``);
      replay adds coloured moire fringes of amplitude ``0.12 v`` and a blue tint and glow. ``ir``: paper
      reflects IR with the picture's luminance showing through; a screen is dark in IR.
    * Sensor noise is added to every image (rgb 0.02, depth 0.015, ir 0.02), then values are clipped.

    Ground truth: at ``attack_visibility=0`` the ``rgb`` of an attack has exactly the distribution of a bona fide
    ``rgb``, so RGB carries no information about the label; the artefacts grow linearly with ``v``. Depth
    separates the classes almost perfectly at every ``v``; ``attack_visibility`` touches RGB only.

    Rows: per split, ``round(attack_ratio * n)`` attacks (half rounds up), alternately print and replay (print
    gets the odd one), at seeded positions. Seeds as for the other generators (module docstring; no structure is
    shared between splits). Every draw is made for every row whatever the options, so for one seed changing
    ``attack_visibility`` changes only the attacks' artefacts, ``ir`` only whether the ``ir`` column exists, and
    ``attack_ratio`` only which rows are attacks (a larger ratio turns more rows into attacks).

    Returns:
        :class:`SpoofData` with ``class_names = ['attack', 'bona_fide']`` and ``meta`` holding
        ``generator='spoof'``, ``paper``, ``params``, ``shapes`` (per image column), ``label_rule``,
        ``attack_types``, ``counts`` (rows per split and attack type), ``attack_visibility``, ``artefacts``
        (what each attack type does to the rgb at this visibility), ``rgb_information``, ``model``
        (:data:`SPOOF_MODEL`), ``n``, ``split_seeds`` and ``seeding``.

    Raises:
        SynthConfigError (a ``ValueError``): an option of the wrong type or out of its range.
    """
    params: dict[str, Any] = {
        "size": size, "attack_ratio": attack_ratio, "attack_visibility": attack_visibility, "ir": ir,
        "n_train": n_train, "n_val": n_val, "n_test": n_test, "seed": seed, "train_seed": train_seed,
        "val_seed": val_seed, "test_seed": test_seed,
    }  # fmt: skip
    size = _check_int("size", size, 4)
    ratio = _check_float("attack_ratio", attack_ratio)
    if not 0.0 <= ratio <= 1.0:
        raise SynthConfigError(f"Option attack_ratio must lie in [0, 1], got {ratio}.")
    v = _check_float("attack_visibility", attack_visibility)
    if not 0.0 <= v <= 1.0:
        raise SynthConfigError(f"Option attack_visibility must lie in [0, 1], got {v}.")
    if not isinstance(ir, (bool, np.bool_)):
        raise SynthConfigError(f"Option ir must be a bool, got {ir!r}.")
    sizes = {s: _check_int(f"n_{s}", val) for s, val in zip(SPLITS, (n_train, n_val, n_test), strict=True)}

    _, streams = _seed_streams(seed, train_seed, val_seed, test_seed)
    parts = [_spoof_split(sizes[s], streams[s], size, ratio, v, bool(ir)) for s in SPLITS]
    rgb, depth, ir_img, kind = (
        None if parts[0][i] is None else np.concatenate([p[i] for p in parts], axis=0) for i in range(4)
    )
    split_arr, ids = _split_and_ids(sizes)
    shapes = {"rgb": [3, size, size], "depth": [1, size, size]}
    if ir:
        shapes["ir"] = [1, size, size]
    m = SPOOF_MODEL
    meta: dict[str, Any] = {
        "generator": "spoof",
        "paper": "OS-MD Table 1 (RGB-D) / Table 3 (RGB-IR) analogue: CASIA-SURF-like face anti-spoofing",
        "params": _plain(params),
        "shapes": shapes,
        "label_rule": "1 = bona fide (a live face: 3-D surface), 0 = attack (a picture on a flat or bent medium)",
        "attack_types": list(ATTACK_TYPES[1:]),
        "counts": {
            s: {t: int(np.sum(p[3] == i)) for i, t in enumerate(ATTACK_TYPES)}
            for s, p in zip(SPLITS, parts, strict=True)
        },
        "attack_visibility": v,
        "artefacts": {
            "print": {
                "blur": f"mix(picture, gaussian_blur(picture, sigma={m['print_blur_sigma']} px), weight {v})",
                "contrast_factor": 1 - m["print_contrast_loss"] * v,
                "colour_cast": f"x * (1 + {v} c), c ~ N({m['print_cast']}, {m['print_cast_jitter']}^2)",
                "depth": "tilted plane, bent by U(0, 0.12) along a random axis",
            },
            "replay": {
                "moire_amplitude": m["replay_moire"] * v,
                "moire_period_px": m["replay_moire_period"],
                "tint": [t * v for t in m["replay_tint"]],
                "glow": m["replay_glow"] * v,
                "depth": "tilted plane",
            },
        },
        "rgb_information": "none at attack_visibility 0 (attack rgb ~ bona fide rgb); grows with attack_visibility",
        "model": m,
        "n": dict(sizes),
        "split_seeds": {"train": train_seed, "val": val_seed, "test": test_seed},
        "seeding": "split streams = SeedSequence(seed).spawn(4)[1:] (the structure stream is unused)",
    }
    return SpoofData(
        rgb=rgb,
        depth=depth,
        ir=ir_img,
        label=(kind == 0).astype(np.int64),
        attack_type=np.asarray(ATTACK_TYPES, dtype=str)[kind],
        split=split_arr,
        ids=ids,
        class_names=list(SPOOF_CLASS_NAMES),
        meta=meta,
    )
