"""Evaluation metrics in pure NumPy: classification, multi-label tagging and kNN retrieval.

All functions take plain arrays (no torch), are vectorised over samples and return dicts of Python
scalars (``float`` in [0, 1], never percent; ``int`` counts), ready for JSON or a table.

Conventions shared by every function:

* Bad shapes, empty input, NaN scores and out-of-range labels raise ``ValueError`` with one sentence.
* Ties are broken deterministically by position: the lower class index (classification), the earlier
  sample (average precision) or the lower gallery index (retrieval) ranks first.
* Per-class averages that are undefined (a zero denominator) count as 0, as scikit-learn does with
  ``zero_division=0``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["classification_metrics", "multilabel_metrics", "retrieval_recall"]

# Upper bound on the number of elements of the temporary (rows x classes) arrays built at once.
_BLOCK_ELEMENTS = 1 << 22


def _safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """Element-wise ``num / den`` as float64, with 0 where ``den`` is 0."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def _scalar_div(num: float, den: float) -> float:
    """``num / den`` as a Python float, 0.0 when ``den`` is 0."""
    return float(num) / float(den) if den else 0.0


def _check_ks(ks: Sequence[int], name: str) -> list[int]:
    """Validate a sequence of positive integer cut-offs and return it as a list of ints."""
    out: list[int] = []
    for k in ks:
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"{name} must contain positive integers, got {k!r}.")
        out.append(int(k))
    return out


def _as_int_labels(labels: np.ndarray, name: str) -> np.ndarray:
    """Return ``labels`` as an int64 array, rejecting non-integral values."""
    arr = np.asarray(labels)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64, copy=False)
    if arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr)):
        return arr.astype(np.int64)
    if arr.dtype.kind == "b":
        return arr.astype(np.int64)
    raise ValueError(f"{name} must hold integer class indices, got dtype {arr.dtype}.")


def _as_scores(scores: np.ndarray, name: str) -> np.ndarray:
    """Return ``scores`` as a float array (float64 unless already floating) and reject NaN."""
    arr = np.asarray(scores)
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN values.")
    return arr


def _as_multi_hot(targets: np.ndarray, name: str) -> np.ndarray:
    """Return a {0, 1} multi-hot array as bool, rejecting any other value."""
    arr = np.asarray(targets)
    if arr.dtype.kind == "b":
        return arr
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must be multi-hot with values in {{0, 1}}.")
    return arr != 0


def _prf_from_counts(tp: np.ndarray, n_pred: np.ndarray, n_true: np.ndarray) -> dict[str, float]:
    """Macro and micro precision/recall/F1 from per-class true-positive, predicted and true counts.

    The macro average runs over classes that occur in the targets or in the predictions; a class whose
    precision (or recall) has a zero denominator contributes 0. F1 per class is ``2 tp / (n_pred + n_true)``,
    which equals the harmonic mean of precision and recall and is 0 when both are 0.
    """
    active = (n_true > 0) | (n_pred > 0)
    precision = _safe_div(tp, n_pred)[active]
    recall = _safe_div(tp, n_true)[active]
    f1 = _safe_div(2 * tp, n_pred + n_true)[active]
    n_active = int(active.sum())
    tp_sum, pred_sum, true_sum = int(tp.sum()), int(n_pred.sum()), int(n_true.sum())
    return {
        "precision_macro": float(precision.sum() / n_active) if n_active else 0.0,
        "recall_macro": float(recall.sum() / n_active) if n_active else 0.0,
        "f1_macro": float(f1.sum() / n_active) if n_active else 0.0,
        "precision_micro": _scalar_div(tp_sum, pred_sum),
        "recall_micro": _scalar_div(tp_sum, true_sum),
        "f1_micro": _scalar_div(2 * tp_sum, pred_sum + true_sum),
    }


def _label_ranks(labels: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """0-based rank of each sample's true class when its row is sorted by (-score, class index).

    ``rank = #{c : s_c > s_y} + #{c < y : s_c == s_y}``, so rank 0 is exactly ``argmax`` (lowest index
    on ties) and "true class in the top k" is ``rank < k``. Rows are processed in blocks.
    """
    n, c = scores.shape
    ranks = np.empty(n, dtype=np.int64)
    step = max(1, _BLOCK_ELEMENTS // c)
    cols = np.arange(c)
    for start in range(0, n, step):
        s = scores[start : start + step]
        y = labels[start : start + step]
        true_score = s[np.arange(len(y)), y][:, None]
        ahead = (s > true_score) | ((s == true_score) & (cols[None, :] < y[:, None]))
        ranks[start : start + step] = ahead.sum(axis=1)
    return ranks


def classification_metrics(
    labels: np.ndarray,
    scores: np.ndarray,
    num_classes: int | None = None,
    topk: Sequence[int] = (1, 5),
) -> dict[str, object]:
    """Single-label multi-class metrics from class scores.

    Args:
        labels: ``(N,)`` integer class indices in ``[0, C)``.
        scores: ``(N, C)`` logits or probabilities. The prediction is ``argmax`` (lowest index on ties).
        num_classes: expected ``C``; if given it must equal ``scores.shape[1]``.
        topk: cut-offs for top-k accuracy; a ``k`` larger than ``C`` is skipped (no key).

    Returns:
        A dict with ``n`` (int); ``accuracy`` and ``wa`` (overall accuracy, the same value); ``ua``
        (mean per-class recall over the classes present in ``labels``); ``top{k}`` per kept ``k`` (the
        true class ranks in the first ``k`` when ties go to the lower index, so ``top1 == accuracy``);
        ``precision_macro``/``recall_macro``/``f1_macro`` over the classes present in ``labels`` or in
        the predictions (a zero denominator contributes 0); ``precision_micro``/``recall_micro``/
        ``f1_micro`` (all equal to ``accuracy`` for single-label data); ``confusion`` as a ``C x C`` list
        of int lists, rows = true class, columns = predicted class.

    Raises:
        ValueError: on empty input, mismatched shapes, NaN scores or labels outside ``[0, C)``.
    """
    scores_arr = _as_scores(scores, "scores")
    labels_arr = _as_int_labels(labels, "labels")
    if labels_arr.ndim != 1:
        raise ValueError(f"labels must be 1-D (N,), got shape {labels_arr.shape}.")
    if scores_arr.ndim != 2:
        raise ValueError(f"scores must be 2-D (N, C), got shape {scores_arr.shape}.")
    n, c = scores_arr.shape
    if labels_arr.shape[0] != n:
        raise ValueError(f"labels has {labels_arr.shape[0]} entries but scores has {n} rows.")
    if n == 0:
        raise ValueError("cannot compute classification metrics on empty input.")
    if c == 0:
        raise ValueError("scores must have at least one class column.")
    if num_classes is not None and num_classes != c:
        raise ValueError(f"num_classes is {num_classes} but scores has {c} columns.")
    if labels_arr.min() < 0 or labels_arr.max() >= c:
        raise ValueError(f"labels must lie in [0, {c}), got values from {labels_arr.min()} to {labels_arr.max()}.")
    ks = _check_ks(topk, "topk")

    preds = np.argmax(scores_arr, axis=1)
    confusion = np.bincount(labels_arr * c + preds, minlength=c * c).reshape(c, c)
    tp = np.diag(confusion)
    n_true = confusion.sum(axis=1)
    n_pred = confusion.sum(axis=0)

    accuracy = float(tp.sum()) / n
    present = n_true > 0
    ua = float(np.mean(tp[present] / n_true[present]))

    out: dict[str, object] = {"n": int(n), "accuracy": accuracy, "wa": accuracy, "ua": ua}
    kept = [k for k in ks if k <= c]
    if kept:
        ranks = _label_ranks(labels_arr, scores_arr)
        for k in kept:
            out[f"top{k}"] = float(np.count_nonzero(ranks < k)) / n
    out.update(_prf_from_counts(tp, n_pred, n_true))
    out["confusion"] = confusion.astype(int).tolist()
    return out


def _average_precision(scores: np.ndarray, hits: np.ndarray) -> float:
    """Average precision of one column: rows ranked by descending score, ties in row order (stable).

    ``AP = mean over positives of (#positives ranked at or before it) / (its 1-based rank)``; NaN when the
    column has no positive. The 0-based rank of a positive row is ``#rows with a higher score`` (one
    ``np.sort`` plus ``searchsorted``) plus, when its score is shared, ``#earlier rows with the same
    score`` (a stable sort of only the rows sharing such a score). Ranks are unique, so sorting the
    positives' ranks puts them in ranking order.
    """
    pos = np.flatnonzero(hits)
    if pos.size == 0:
        return float("nan")
    pos_scores = scores[pos]
    ascending = np.sort(scores)
    right = np.searchsorted(ascending, pos_scores, side="right")
    left = np.searchsorted(ascending, pos_scores, side="left")
    ahead = (scores.shape[0] - right).astype(np.int64)
    tied = right - left > 1
    if tied.any():
        cand = np.flatnonzero(np.isin(scores, pos_scores[tied]))  # rows at a tied score, in row order
        order = np.argsort(scores[cand], kind="stable")  # by score, then row
        slot = np.empty(cand.size, dtype=np.int64)
        slot[order] = np.arange(cand.size)
        group_start = np.searchsorted(scores[cand][order], pos_scores[tied], side="left")
        ahead[tied] += slot[np.searchsorted(cand, pos[tied])] - group_start
    ranks = np.sort(ahead) + 1
    return float(np.mean(np.arange(1, pos.size + 1) / ranks))


def multilabel_metrics(
    targets: np.ndarray,
    scores: np.ndarray,
    threshold: float = 0.0,
) -> dict[str, object]:
    """Multi-label (tagging) metrics from per-class scores.

    Args:
        targets: ``(N, C)`` multi-hot array with values in ``{0, 1}`` (bool or numeric).
        scores: ``(N, C)`` scores, typically logits. The prediction is ``score > threshold``; the default
            ``0.0`` on logits is probability 0.5.
        threshold: decision threshold for the thresholded metrics (``map`` does not use it).

    Returns:
        A dict with ``n`` (int); ``map`` (mean average precision over classes with at least one positive
        target; rows ranked by descending score, ties in row order; NaN if no class has a positive);
        ``accuracy`` (exact-match / subset accuracy); ``hamming_accuracy`` (fraction of correct
        (sample, class) decisions); ``precision_macro``/``recall_macro``/``f1_macro`` over classes with at
        least one positive target or prediction (zero denominators contribute 0); and
        ``precision_micro``/``recall_micro``/``f1_micro`` pooled over all (sample, class) pairs.

    Raises:
        ValueError: on empty input, mismatched shapes, NaN scores or non-binary targets.
    """
    scores_arr = _as_scores(scores, "scores")
    targets_arr = np.asarray(targets)
    if targets_arr.ndim != 2 or scores_arr.ndim != 2:
        raise ValueError(f"targets and scores must both be 2-D (N, C), got {targets_arr.shape} and {scores_arr.shape}.")
    if targets_arr.shape != scores_arr.shape:
        raise ValueError(f"targets shape {targets_arr.shape} does not match scores shape {scores_arr.shape}.")
    n, c = scores_arr.shape
    if n == 0 or c == 0:
        raise ValueError("cannot compute multi-label metrics on empty input.")
    truth = _as_multi_hot(targets_arr, "targets")

    # One vectorised pass per class (a loop over C, never over samples).
    aps = [_average_precision(scores_arr[:, j], truth[:, j]) for j in np.flatnonzero(truth.any(axis=0))]
    mean_ap = float(np.mean(aps)) if aps else float("nan")

    preds = scores_arr > threshold
    correct = preds == truth
    tp = np.count_nonzero(preds & truth, axis=0)
    n_pred = np.count_nonzero(preds, axis=0)
    n_true = np.count_nonzero(truth, axis=0)

    out: dict[str, object] = {
        "n": int(n),
        "map": mean_ap,
        "accuracy": float(np.count_nonzero(correct.all(axis=1))) / n,
        "hamming_accuracy": float(np.count_nonzero(correct)) / correct.size,
    }
    out.update(_prf_from_counts(tp, n_pred, n_true))
    return out


def _l2_normalise(x: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Rows scaled to unit L2 norm in ``dtype``; all-zero rows stay zero."""
    x = x.astype(dtype, copy=False)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)


def retrieval_recall(
    query: np.ndarray,
    query_labels: np.ndarray,
    gallery: np.ndarray,
    gallery_labels: np.ndarray,
    ks: Sequence[int] = (1, 5, 10),
    chunk: int = 4096,
) -> dict[str, float]:
    """Cosine kNN retrieval recall@k (AMID protocol): does one of the k nearest gallery items share a class?

    Rows of ``query`` and ``gallery`` are L2-normalised (a zero row stays zero, so all its similarities
    are 0) and ranked by cosine similarity, ties going to the lower gallery index. For every query the
    rank of the best-ranked same-class gallery item is computed exactly; R@k is the fraction of queries
    whose rank is below ``min(k, G)``. A query with no same-class item in the gallery is a miss at every
    k. The query is not excluded from the gallery (pass disjoint sets, e.g. test against train).

    Args:
        query: ``(Q, E)`` query embeddings.
        query_labels: ``(Q,)`` class labels, or ``(Q, L)`` multi-hot labels.
        gallery: ``(G, E)`` gallery embeddings.
        gallery_labels: ``(G,)`` or ``(G, L)``, the same kind as ``query_labels``. With multi-hot labels
            two items share a class when they have at least one positive label in common.
        ks: cut-offs; each is clipped to ``G``; the keys are ``r@{k}`` with the ``k`` as given.
        chunk: number of query rows scored at once; peak memory is a few ``chunk x G`` arrays.

    Returns:
        ``{"r@1": ..., "r@5": ..., ...}`` as Python floats in [0, 1].

    Raises:
        ValueError: on empty input, mismatched shapes or NaN embeddings.
    """
    q = _as_scores(query, "query")
    g = _as_scores(gallery, "gallery")
    ql = np.asarray(query_labels)
    gl = np.asarray(gallery_labels)
    if q.ndim != 2 or g.ndim != 2:
        raise ValueError(f"query and gallery must be 2-D (rows, dim), got {q.shape} and {g.shape}.")
    if q.shape[1] != g.shape[1]:
        raise ValueError(f"query dimension {q.shape[1]} does not match gallery dimension {g.shape[1]}.")
    if q.shape[0] == 0 or g.shape[0] == 0:
        raise ValueError("cannot compute retrieval recall with an empty query set or gallery.")
    if ql.shape[0] != q.shape[0] or gl.shape[0] != g.shape[0]:
        raise ValueError(
            f"label counts ({ql.shape[0]} query, {gl.shape[0]} gallery) do not match the "
            f"embedding rows ({q.shape[0]} query, {g.shape[0]} gallery)."
        )
    if ql.ndim != gl.ndim or ql.ndim not in (1, 2):
        raise ValueError(
            f"query_labels and gallery_labels must both be 1-D or both 2-D, got {ql.shape} and {gl.shape}."
        )
    if ql.ndim == 2 and ql.shape[1] != gl.shape[1]:
        raise ValueError(f"multi-hot query_labels have {ql.shape[1]} columns but gallery_labels have {gl.shape[1]}.")
    if isinstance(chunk, bool) or not isinstance(chunk, (int, np.integer)) or chunk < 1:
        raise ValueError(f"chunk must be a positive integer, got {chunk!r}.")
    k_list = _check_ks(ks, "ks")

    dtype = np.result_type(q.dtype, g.dtype, np.float32)
    qn = _l2_normalise(q, dtype)
    gn_t = np.ascontiguousarray(_l2_normalise(g, dtype).T)
    multi_hot = ql.ndim == 2
    if multi_hot:
        ql_f = (_as_multi_hot(ql, "query_labels")).astype(np.float32)
        gl_t = np.ascontiguousarray(_as_multi_hot(gl, "gallery_labels").T.astype(np.float32))

    n_q, n_g = q.shape[0], g.shape[0]
    cols = np.arange(n_g)
    best_rank = np.empty(n_q, dtype=np.int64)
    for start in range(0, n_q, int(chunk)):
        stop = min(start + int(chunk), n_q)
        sims = qn[start:stop] @ gn_t
        if multi_hot:
            same = (ql_f[start:stop] @ gl_t) > 0
        else:
            same = ql[start:stop, None] == gl[None, :]
        has_same = same.any(axis=1)
        # Best similarity among same-class items, and the first such item (lowest index) at that value.
        best = np.max(sims, axis=1, where=same, initial=-np.inf)[:, None]
        tied = sims == best
        first = np.argmax(tied & same, axis=1)[:, None]
        rank = np.count_nonzero(sims > best, axis=1) + np.count_nonzero(tied & (cols < first), axis=1)
        best_rank[start:stop] = np.where(has_same, rank, n_g)
    return {f"r@{k}": float(np.count_nonzero(best_rank < min(k, n_g))) / n_q for k in k_list}
