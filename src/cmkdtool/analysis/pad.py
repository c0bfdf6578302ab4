"""Presentation attack detection (PAD) metrics, ISO/IEC 30107-3, for binary bona fide / attack tasks.

A score is "how bona fide" a sample looks: for a two-class model, the softmax probability of the bona fide
class (:func:`bona_fide_scores`; CASIA-SURF and CeFA label bona fide (real) 1 and attack 0). At a threshold
``t`` a sample is **accepted as bona fide iff score >= t** (a score exactly at ``t`` is accepted); the default
``t = 0.5`` is the argmax of two classes.

===============  ==========================================================================================
APCER            attacks accepted as bona fide / attacks (pooled over every attack row)
APCER[type]      the same within one attack type (PAI species)
APCER_max        the maximum of APCER[type] over the types: what ISO/IEC 30107-3 reports
BPCER            bona fide rows rejected as attacks / bona fide rows (older name NPCER; = FRR)
ACER             (APCER + BPCER) / 2, with the pooled APCER (``apcer="max"``: with APCER_max)
HTER             (FAR + FRR) / 2 with FAR = pooled APCER and FRR = BPCER: the pooled ACER, as papers name it
EER              the rate where APCER(t) = BPCER(t) as t varies, and that t (see :func:`eer_threshold`)
TPR@APCER=a      bona fide acceptance 1 - BPCER(t) at the lowest t with APCER(t) <= a (see :func:`pad_metrics`)
===============  ==========================================================================================

Rates are fractions in [0, 1]. A rate whose denominator is empty (no attack row, or no bona fide row) is NaN
and :func:`pad_metrics` says so in its ``notes``; nothing raises ``ZeroDivisionError``.

Reference-code warnings (compare numbers with care): shicaiwei123/TMM-MMH (``lib/model_develop.py``,
``hmdb51/lib/model_develop.py``) computes "APCER" as ``living_wrong / (spoofing_right + living_wrong)`` and
"NPCER" as ``spoofing_wrong / (spoofing_wrong + living_right)``: the denominators are *predicted*-class counts,
not the ISO true-class counts used here; its "HTER" ``(FAR + FRR) / 2`` is the ISO ACER.
shicaiwei123/MMANet-CVPR2023 (``classification/lib/model_develop.py``) computes the correct ACER
``(living_wrong / living + spoofing_wrong / spoofing) / 2`` but with the names of its two components swapped.

The options dataclass and this module's import are NumPy-free (the command line's ``--help`` stays fast);
NumPy is imported by the functions that compute.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from typing import TYPE_CHECKING

from cmkdtool.errors import CmkdUsageError
from cmkdtool.options import check, flag_name, opt

if TYPE_CHECKING:
    import numpy as np

ATTACK_TYPE_COLUMN = "attack_type"
"""The column ``eval --pad`` reads attack types from when it is present and no other is named."""
VAL_EER = "val-eer"
TPR_AT = (1e-2, 1e-3, 1e-4)
"""APCER targets of ``tpr@apcer=...`` (CASIA-SURF reports TPR at FPR 1e-2, 1e-3, 1e-4)."""


def parse_pad_threshold(text: str) -> float | str:
    """``--pad-threshold``: a number in [0, 1], or ``val-eer``."""
    t = str(text).strip().lower()
    if t == VAL_EER:
        return VAL_EER
    try:
        return float(t)
    except ValueError as e:
        raise CmkdUsageError(f"--pad-threshold must be a number in [0, 1] or {VAL_EER}; got '{text}'") from e


@dataclass
class PadOptions:
    """What ``eval --pad`` computes (the ``--pad/--bona-fide-class/...`` options)."""

    pad: bool = opt(
        False,
        "Presentation attack detection metrics (ISO/IEC 30107-3) of a two-class bona fide/attack model: "
        "APCER (pooled, per attack type, max), BPCER, ACER, HTER, EER and its threshold, TPR@APCER.",
    )
    bona_fide_class: int = opt(1, "Class index of bona fide (real) samples; the other class is attack.", ge=0, le=1)
    attack_type_column: str | None = opt(
        None,
        "Table column of attack types (PAI species; strings or integers) for per-type APCER and APCER_max "
        f"[default: '{ATTACK_TYPE_COLUMN}' when the table has it].",
    )
    pad_threshold: float | str = opt(
        0.5,
        "Accept as bona fide iff P(bona fide) >= this, in [0, 1]; or val-eer: the EER threshold of the val "
        "split, applied to the evaluated split.",
        cli=str,
        parse=parse_pad_threshold,
        ge=0,
        le=1,
    )
    apcer_max: bool = opt(False, "ACER from the maximum APCER over attack types (ISO) instead of the pooled APCER.")

    def validate(self) -> None:
        """Check the values; PAD options other than ``--pad`` without ``--pad`` are a usage error."""
        check(self)
        if not self.pad:
            default = PadOptions()
            given = [f.name for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)]
            if given:
                flags = ", ".join(flag_name(g) for g in given)
                raise CmkdUsageError(f"{flags}: presentation attack detection options, used only with --pad; add --pad")


# ----------------------------------------------------------------------------------------------- metrics


def bona_fide_scores(logits: np.ndarray, bona_fide: int = 1) -> np.ndarray:
    """``softmax(logits)[:, bona_fide]`` as float64, computed stably (the max logit subtracted first)."""
    import numpy as np

    z = np.asarray(logits, dtype=np.float64)
    if z.ndim != 2 or not 0 <= bona_fide < z.shape[1]:
        raise ValueError(f"logits must be (N, C) with bona fide class {bona_fide} < C, got shape {z.shape}.")
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e[:, bona_fide] / e.sum(axis=1)


def _check(scores, labels, bona_fide: int) -> tuple[np.ndarray, np.ndarray]:
    """(scores as float64 (N,), bona fide mask (N,)) after the shape and NaN checks."""
    import numpy as np

    from cmkdtool.analysis.metrics import _as_int_labels, _as_scores

    s = _as_scores(scores, "scores").astype(np.float64, copy=False)
    y = _as_int_labels(labels, "labels")
    if s.ndim != 1 or y.ndim != 1:
        raise ValueError(f"scores and labels must be 1-D (N,), got shapes {s.shape} and {y.shape}.")
    if s.shape[0] != y.shape[0]:
        raise ValueError(f"scores has {s.shape[0]} entries but labels has {y.shape[0]}.")
    if s.shape[0] == 0:
        raise ValueError("cannot compute PAD metrics on empty input.")
    return s, y == bona_fide


def _curve(s: np.ndarray, bona: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(thresholds, APCER, BPCER) at every distinct score, ascending, then just above the largest score.

    At the lowest threshold every row is accepted (APCER 1, BPCER 0); at the last one, ``nextafter(max)``,
    every row is rejected (APCER 0, BPCER 1). Needs at least one attack and one bona fide row.
    """
    import numpy as np

    t = np.unique(s)
    t = np.append(t, np.nextafter(t[-1], np.inf))
    att = np.sort(s[~bona])
    bf = np.sort(s[bona])
    apcer = (att.size - np.searchsorted(att, t, side="left")) / att.size  # attacks with score >= t
    bpcer = np.searchsorted(bf, t, side="left") / bf.size  # bona fide with score < t
    return t, apcer, bpcer


def _eer(t: np.ndarray, apcer: np.ndarray, bpcer: np.ndarray) -> tuple[float, float]:
    """(threshold, EER) from :func:`_curve`'s output (see :func:`eer_threshold`)."""
    import numpy as np

    d = apcer - bpcer  # non-increasing from 1 (first threshold) to -1 (last)
    k = int(np.argmax(d <= 0))
    if d[k] == 0:
        return float(t[k]), float(apcer[k])
    w = d[k - 1] / (d[k - 1] - d[k])
    return float(t[k - 1] + w * (t[k] - t[k - 1])), float(apcer[k - 1] + w * (apcer[k] - apcer[k - 1]))


def eer_threshold(scores: np.ndarray, labels: np.ndarray, bona_fide: int = 1) -> tuple[float, float]:
    """``(threshold, EER)``: where APCER(t) and BPCER(t) cross as the threshold ``t`` varies.

    APCER(t) and BPCER(t) are evaluated at every distinct score ``t_0 < t_1 < ...`` (accepting ``score >= t``)
    and at ``nextafter(t_max)`` (every row rejected). APCER falls from 1 and BPCER rises to 1, so their
    difference changes sign once: at the first ``t_k`` where ``APCER(t_k) <= BPCER(t_k)``. If they are equal
    there, EER is that rate and the threshold ``t_k`` (the lowest such threshold); otherwise both rates and the
    threshold are interpolated linearly between ``t_{k-1}`` and ``t_k`` to the point where the two lines meet:
    ``w = d_{k-1} / (d_{k-1} - d_k)`` with ``d = APCER - BPCER``, ``EER = APCER_{k-1} + w (APCER_k -
    APCER_{k-1})`` (= the interpolated BPCER), ``threshold = t_{k-1} + w (t_k - t_{k-1})``. This is the point
    where the piecewise-linear ROC curve meets ``FPR = 1 - TPR``, the value of the usual
    ``brentq(lambda x: 1 - x - interp1d(fpr, tpr)(x), 0, 1)`` recipe.

    ``(nan, nan)`` when there is no attack or no bona fide row.
    """
    s, bona = _check(scores, labels, bona_fide)
    if bona.all() or not bona.any():
        return float("nan"), float("nan")
    return _eer(*_curve(s, bona))


def _type_key(v) -> str:
    return f"apcer[{v}]"


def _missing(v) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def pad_metrics(
    scores: np.ndarray,
    labels: np.ndarray,
    threshold: float = 0.5,
    attack_types: np.ndarray | Sequence | None = None,
    bona_fide: int = 1,
    *,
    apcer: str = "pooled",
    tpr_at: Sequence[float] = TPR_AT,
) -> dict[str, object]:
    """ISO/IEC 30107-3 PAD metrics of bona fide scores at ``threshold``, and threshold-free EER and TPR@APCER.

    Args:
        scores: ``(N,)`` how bona fide each row looks, higher = more bona fide; normally
            :func:`bona_fide_scores` (the softmax probability of the bona fide class).
        labels: ``(N,)`` integer labels; a row is bona fide iff its label equals ``bona_fide``, otherwise it
            is an attack.
        threshold: a row is accepted as bona fide iff ``score >= threshold`` (a score exactly at the threshold
            is accepted).
        attack_types: ``(N,)`` attack type (PAI species) of each row, strings or integers; read only on attack
            rows (bona fide rows may hold anything, e.g. None). Gives ``apcer[<type>]`` per type and
            ``apcer_max``.
        bona_fide: the bona fide label (CASIA-SURF: 1).
        apcer: ``"pooled"`` (default) or ``"max"``: which APCER goes into ``acer``. Without ``attack_types`` all
            attacks are one type, so both are the pooled APCER.
        tpr_at: APCER targets ``a`` of ``tpr@apcer=<a>``: the largest bona fide acceptance ``1 - BPCER(t)``
            among the thresholds ``t`` (every distinct score, and above the largest) with ``APCER(t) <= a``, with
            no interpolation. With fewer than ``1/a`` attacks only APCER 0 is below ``a``.

    Returns:
        A dict, in this order: ``n_bona_fide``, ``n_attack`` (ints); ``pad_threshold``; ``apcer``;
        ``apcer[<type>]`` per type in sorted order and ``apcer_max`` (only with ``attack_types``); ``bpcer``;
        ``acer``; ``hter`` (``(APCER + BPCER) / 2`` with the pooled APCER, whatever ``apcer`` says);
        ``eer``, ``eer_threshold`` (see :func:`eer_threshold`); ``tpr@apcer=<a>`` per target (``f"{a:g}"``);
        and ``notes``, a list of sentences saying why a rate is NaN (empty when none is).

    Raises:
        ValueError: on empty input, mismatched shapes, NaN scores, a non-finite threshold, an unknown
            ``apcer``, or an attack row without an attack type.
    """
    import numpy as np

    s, bona = _check(scores, labels, bona_fide)
    if not isinstance(threshold, (int, float, np.floating, np.integer)) or not math.isfinite(threshold):
        raise ValueError(f"threshold must be a finite number, got {threshold!r}.")
    if apcer not in ("pooled", "max"):
        raise ValueError(f"apcer must be 'pooled' or 'max', got {apcer!r}.")
    targets = [float(a) for a in tpr_at]
    if any(not 0 <= a <= 1 for a in targets):
        raise ValueError(f"tpr_at targets must lie in [0, 1], got {list(tpr_at)}.")
    nan = float("nan")
    n_bf = int(bona.sum())
    n_att = int(s.size - n_bf)
    accepted = s >= threshold
    notes: list[str] = []
    out: dict[str, object] = {"n_bona_fide": n_bf, "n_attack": n_att, "pad_threshold": float(threshold)}

    apcer_pooled = float(np.count_nonzero(accepted & ~bona)) / n_att if n_att else nan
    out["apcer"] = apcer_pooled
    apcer_worst = apcer_pooled
    if attack_types is not None:
        types = np.asarray(attack_types, dtype=object)
        if types.shape != s.shape:
            raise ValueError(f"attack_types has shape {types.shape} but scores has {s.shape}.")
        att_types = types[~bona]
        missing = [i for i, v in enumerate(att_types) if _missing(v)]
        if missing:
            raise ValueError(f"{len(missing)} attack rows have no attack type; give every attack row its type.")
        att_accepted = accepted[~bona]
        per_type = {}
        for v in sorted(set(att_types.tolist())):
            rows = att_types == v
            per_type[_type_key(v)] = float(np.count_nonzero(att_accepted[rows])) / int(rows.sum())
        out.update(per_type)
        apcer_worst = max(per_type.values()) if per_type else nan
        out["apcer_max"] = apcer_worst
    elif apcer == "max" and n_att:
        notes.append("no attack types given: all attacks are one type, so ACER uses the pooled APCER")

    bpcer = float(np.count_nonzero(~accepted & bona)) / n_bf if n_bf else nan
    out["bpcer"] = bpcer
    out["acer"] = ((apcer_worst if apcer == "max" else apcer_pooled) + bpcer) / 2
    out["hter"] = (apcer_pooled + bpcer) / 2

    if n_att and n_bf:
        t, ap, bp = _curve(s, bona)
        eer_t, out["eer"] = _eer(t, ap, bp)
        out["eer_threshold"] = eer_t
        n_acc = np.rint(ap * n_att).astype(np.int64)  # attacks accepted at each threshold, as exact counts
        for a in targets:
            ok = n_acc <= math.floor(a * n_att + 1e-9)  # APCER(t) <= a, decided on counts (no rounding)
            out[f"tpr@apcer={a:g}"] = float(np.max(1.0 - bp[ok]))
    else:
        out["eer"] = out["eer_threshold"] = nan
        for a in targets:
            out[f"tpr@apcer={a:g}"] = nan
        if not n_att:
            notes.append(
                f"no attack rows (label other than {bona_fide}): APCER, ACER, HTER, EER and TPR@APCER are undefined "
                "(NaN)"
            )
        if not n_bf:
            notes.append(
                f"no bona fide rows (label {bona_fide}): BPCER, ACER, HTER, EER and TPR@APCER are undefined (NaN)"
            )
    out["notes"] = notes
    return out


__all__ = [
    "ATTACK_TYPE_COLUMN",
    "PadOptions",
    "TPR_AT",
    "VAL_EER",
    "bona_fide_scores",
    "eer_threshold",
    "pad_metrics",
    "parse_pad_threshold",
]
