"""Tests for cmkdtool.analysis.metrics against hand-computed values and brute-force references."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cmkdtool.analysis.metrics import classification_metrics, multilabel_metrics, retrieval_recall

# ---------------------------------------------------------------------------------------------------
# classification_metrics
# ---------------------------------------------------------------------------------------------------

# 7 samples, 3 classes. Predictions (argmax, lowest index on ties) = [0, 0, 1, 1, 1, 0, 0].
CLS_LABELS = np.array([0, 0, 0, 1, 1, 2, 2])
CLS_SCORES = np.array(
    [
        [0.90, 0.05, 0.05],  # y=0 pred 0; ranking 0,1,2 (1 before 2 on the tie)
        [0.60, 0.30, 0.10],  # y=0 pred 0
        [0.30, 0.50, 0.20],  # y=0 pred 1; true class ranked 2nd -> top-2 hit
        [0.20, 0.70, 0.10],  # y=1 pred 1
        [0.10, 0.80, 0.10],  # y=1 pred 1
        [0.50, 0.30, 0.20],  # y=2 pred 0; true class ranked 3rd -> top-2 miss
        [0.40, 0.20, 0.40],  # y=2 tie with class 0 -> pred 0 (lower index); true class ranked 2nd
    ]
)


def test_classification_hand_example() -> None:
    m = classification_metrics(CLS_LABELS, CLS_SCORES, num_classes=3, topk=(1, 2, 3, 5))
    # Confusion (rows true, cols predicted):
    #   true 0: [2, 1, 0]   true 1: [0, 2, 0]   true 2: [2, 0, 0]
    assert m["confusion"] == [[2, 1, 0], [0, 2, 0], [2, 0, 0]]
    assert m["n"] == 7
    # WA = trace / N = (2 + 2 + 0) / 7
    assert m["accuracy"] == pytest.approx(4 / 7)
    assert m["wa"] == pytest.approx(4 / 7)
    # per-class recall = [2/3, 2/2, 0/2] -> UA = (2/3 + 1 + 0) / 3 = 5/9 (differs from WA: unbalanced)
    assert m["ua"] == pytest.approx(5 / 9)
    # top-1 == accuracy; top-2 misses only sample 5 -> 6/7; top-3 = 1; top-5 skipped since 5 > C = 3
    assert m["top1"] == pytest.approx(4 / 7)
    assert m["top2"] == pytest.approx(6 / 7)
    assert m["top3"] == pytest.approx(1.0)
    assert "top5" not in m
    # precision = tp / predicted = [2/4, 2/3, 0 (class 2 never predicted)] -> macro = (1/2 + 2/3) / 3 = 7/18
    assert m["precision_macro"] == pytest.approx(7 / 18)
    # recall macro over classes {0,1,2} = (2/3 + 1 + 0) / 3 = 5/9
    assert m["recall_macro"] == pytest.approx(5 / 9)
    # F1_c = 2 tp / (n_true + n_pred): [4/7, 4/5, 0] -> macro = (4/7 + 4/5) / 3 = 16/35
    assert m["f1_macro"] == pytest.approx(16 / 35)
    # single-label micro P = R = F1 = accuracy
    for key in ("precision_micro", "recall_micro", "f1_micro"):
        assert m[key] == pytest.approx(4 / 7)


def test_classification_output_types() -> None:
    m = classification_metrics(CLS_LABELS, CLS_SCORES)
    assert set(m) == {
        "n", "accuracy", "wa", "ua", "top1", "precision_macro", "recall_macro", "f1_macro",
        "precision_micro", "recall_micro", "f1_micro", "confusion",
    }  # fmt: skip
    assert type(m["n"]) is int
    for key, value in m.items():
        if key not in ("n", "confusion"):
            assert type(value) is float, key
            assert 0.0 <= value <= 1.0
    assert all(type(v) is int for row in m["confusion"] for v in row)


def test_classification_class_only_in_predictions() -> None:
    # C = 4, labels use {0, 1}, predictions use {0, 1, 2}; class 3 appears nowhere.
    labels = np.array([0, 0, 1, 1])
    scores = np.eye(4)[[0, 2, 1, 1]]  # predictions [0, 2, 1, 1]
    m = classification_metrics(labels, scores, topk=(1,))
    # tp = [1, 2, 0, 0], n_true = [2, 2, 0, 0], n_pred = [1, 2, 1, 0]; macro classes = {0, 1, 2}
    # precision [1, 1, 0] -> 2/3; recall [1/2, 1, 0 (0/0)] -> 1/2; F1 [2/3, 1, 0] -> 5/9
    assert m["precision_macro"] == pytest.approx(2 / 3)
    assert m["recall_macro"] == pytest.approx(1 / 2)
    assert m["f1_macro"] == pytest.approx(5 / 9)
    # UA only over classes present in labels: (1/2 + 1) / 2
    assert m["ua"] == pytest.approx(3 / 4)
    assert m["accuracy"] == pytest.approx(3 / 4)
    assert m["confusion"] == [[1, 0, 1, 0], [0, 2, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]]


def test_classification_all_ties_predict_lowest_index() -> None:
    labels = np.array([0, 1, 2, 2])
    scores = np.zeros((4, 3))
    m = classification_metrics(labels, scores, topk=(1, 2, 3))
    # every prediction is class 0; ranking is always 0, 1, 2
    assert m["confusion"] == [[1, 0, 0], [1, 0, 0], [2, 0, 0]]
    assert m["top1"] == pytest.approx(1 / 4)
    assert m["top2"] == pytest.approx(2 / 4)
    assert m["top3"] == pytest.approx(1.0)


def _brute_topk(labels: np.ndarray, scores: np.ndarray, k: int) -> float:
    hits = 0
    for y, row in zip(labels.tolist(), scores.tolist(), strict=True):
        order = sorted(range(len(row)), key=lambda c, row=row: (-row[c], c))
        hits += y in order[:k]
    return hits / len(labels)


def test_classification_random_against_brute_force() -> None:
    rng = np.random.default_rng(0)
    n, c = 300, 6
    labels = rng.integers(0, c, size=n)
    scores = rng.integers(0, 4, size=(n, c)).astype(np.float32)  # many ties on purpose
    m = classification_metrics(labels, scores, topk=(1, 2, 3, 6))
    preds = [max(range(c), key=lambda j, r=r: (r[j], -j)) for r in scores.tolist()]
    conf = [[0] * c for _ in range(c)]
    for y, p in zip(labels.tolist(), preds, strict=True):
        conf[y][p] += 1
    assert m["confusion"] == conf
    assert m["accuracy"] == pytest.approx(sum(conf[i][i] for i in range(c)) / n)
    for k in (1, 2, 3, 6):
        assert m[f"top{k}"] == pytest.approx(_brute_topk(labels, scores, k))
    assert m["top1"] == pytest.approx(m["accuracy"])


def test_classification_errors() -> None:
    with pytest.raises(ValueError, match="rows"):
        classification_metrics(np.array([0, 1]), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="empty"):
        classification_metrics(np.array([], dtype=int), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="num_classes"):
        classification_metrics(np.array([0, 1]), np.zeros((2, 2)), num_classes=3)
    with pytest.raises(ValueError, match="lie in"):
        classification_metrics(np.array([0, 2]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="2-D"):
        classification_metrics(np.array([0, 1]), np.zeros(2))
    with pytest.raises(ValueError, match="integer"):
        classification_metrics(np.array([0.5, 1.0]), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="NaN"):
        classification_metrics(np.array([0, 1]), np.array([[np.nan, 0.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="topk"):
        classification_metrics(np.array([0, 1]), np.zeros((2, 2)), topk=(0,))


# ---------------------------------------------------------------------------------------------------
# multilabel_metrics
# ---------------------------------------------------------------------------------------------------

ML_TARGETS = np.array(
    [
        [1, 0, 1],
        [0, 1, 0],
        [1, 1, 0],
        [0, 0, 0],
    ]
)
ML_SCORES = np.array(
    [
        [2.0, -1.0, 0.5],  # pred [1, 0, 1]  exact
        [-0.5, 1.5, 0.6],  # pred [0, 1, 1]  false positive on class 2
        [0.7, -0.2, -1.0],  # pred [1, 0, 0]  false negative on class 1
        [-2.0, -0.1, -0.1],  # pred [0, 0, 0]  exact
    ]
)


def test_multilabel_hand_example() -> None:
    m = multilabel_metrics(ML_TARGETS, ML_SCORES)
    assert m["n"] == 4
    # exact-match rows: 0 and 3 -> 2/4; wrong cells: (1,2) and (2,1) -> 10/12
    assert m["accuracy"] == pytest.approx(1 / 2)
    assert m["hamming_accuracy"] == pytest.approx(10 / 12)
    # class 0: tp 2 fp 0 fn 0 -> P 1, R 1, F1 1
    # class 1: tp 1 fp 0 fn 1 -> P 1, R 1/2, F1 2/3
    # class 2: tp 1 fp 1 fn 0 -> P 1/2, R 1, F1 2/3
    assert m["precision_macro"] == pytest.approx((1 + 1 + 1 / 2) / 3)
    assert m["recall_macro"] == pytest.approx((1 + 1 / 2 + 1) / 3)
    assert m["f1_macro"] == pytest.approx((1 + 2 / 3 + 2 / 3) / 3)
    # pooled: tp 4, predicted 5, true 5
    assert m["precision_micro"] == pytest.approx(4 / 5)
    assert m["recall_micro"] == pytest.approx(4 / 5)
    assert m["f1_micro"] == pytest.approx(8 / 10)
    # AP class 0: ranking rows 0(+), 2(+), 1, 3 -> (1/1 + 2/2) / 2 = 1
    # AP class 1: ranking rows 1(+), 3(-), 2(+), 0 -> (1/1 + 2/3) / 2 = 5/6
    # AP class 2: ranking rows 1(-), 0(+), ...    -> (1/2) / 1 = 1/2
    # mAP = (1 + 5/6 + 1/2) / 3 = 7/9
    assert m["map"] == pytest.approx(7 / 9)


def test_multilabel_threshold() -> None:
    # threshold 0.55: preds [1,0,0], [0,1,1], [1,0,0], [0,0,0] -> class 2 loses its tp on row 0
    m = multilabel_metrics(ML_TARGETS, ML_SCORES, threshold=0.55)
    # class 0: P 1 R 1; class 1: P 1 R 1/2; class 2: tp 0 fp 1 fn 1 -> P 0 R 0 F1 0
    assert m["precision_macro"] == pytest.approx(2 / 3)
    assert m["recall_macro"] == pytest.approx(1 / 2)
    assert m["f1_macro"] == pytest.approx((1 + 2 / 3) / 3)
    assert m["accuracy"] == pytest.approx(1 / 4)  # only row 3 is exact
    assert m["map"] == pytest.approx(7 / 9)  # ranking metric ignores the threshold


def test_multilabel_inactive_and_prediction_only_classes() -> None:
    # column 3: no positives, never predicted -> ignored by mAP and macro
    # column 4: no positives, predicted once -> ignored by mAP, counts 0 in macro P/R/F1
    targets = np.hstack([ML_TARGETS, np.zeros((4, 2), dtype=int)])
    scores = np.hstack([ML_SCORES, np.full((4, 1), -1.0), np.array([[1.0], [-1.0], [-1.0], [-1.0]])])
    m = multilabel_metrics(targets, scores)
    assert m["map"] == pytest.approx(7 / 9)
    assert m["precision_macro"] == pytest.approx((1 + 1 + 1 / 2 + 0) / 4)
    assert m["recall_macro"] == pytest.approx((1 + 1 / 2 + 1 + 0) / 4)
    assert m["f1_macro"] == pytest.approx((1 + 2 / 3 + 2 / 3 + 0) / 4)
    assert m["precision_micro"] == pytest.approx(4 / 6)
    assert m["recall_micro"] == pytest.approx(4 / 5)


def test_multilabel_ap_ties_follow_row_order() -> None:
    # equal scores: earlier row ranks first
    m = multilabel_metrics(np.array([[0], [1]]), np.array([[0.5], [0.5]]))
    assert m["map"] == pytest.approx(1 / 2)  # negative first -> precision@2 = 1/2
    m = multilabel_metrics(np.array([[1], [0]]), np.array([[0.5], [0.5]]))
    assert m["map"] == pytest.approx(1.0)


def test_multilabel_no_positive_anywhere_gives_nan_map() -> None:
    m = multilabel_metrics(np.zeros((3, 2)), np.full((3, 2), -1.0))
    assert math.isnan(m["map"])
    assert m["accuracy"] == pytest.approx(1.0)
    assert m["f1_macro"] == 0.0 and m["f1_micro"] == 0.0


def _brute_ap(targets: list[int], scores: list[float]) -> float:
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    hits, total = 0, 0.0
    for rank, i in enumerate(order, start=1):
        if targets[i]:
            hits += 1
            total += hits / rank
    return total / hits


@pytest.mark.parametrize("decimals", [None, 1])
def test_multilabel_map_random_against_brute_force(decimals: int | None) -> None:
    rng = np.random.default_rng(1)
    n, c = 200, 12
    targets = (rng.random((n, c)) < 0.2).astype(np.int64)
    targets[:, 5] = 0  # a class without positives is excluded
    scores = rng.normal(size=(n, c)).astype(np.float32)
    if decimals is not None:
        scores = np.round(scores, decimals)  # rounding creates many ties
    m = multilabel_metrics(targets, scores)
    aps = [_brute_ap(targets[:, j].tolist(), scores[:, j].tolist()) for j in range(c) if targets[:, j].any()]
    assert len(aps) == c - 1
    assert m["map"] == pytest.approx(sum(aps) / len(aps))


def test_multilabel_errors() -> None:
    with pytest.raises(ValueError, match="does not match"):
        multilabel_metrics(np.zeros((3, 2)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="2-D"):
        multilabel_metrics(np.zeros(3), np.zeros(3))
    with pytest.raises(ValueError, match="empty"):
        multilabel_metrics(np.zeros((0, 2)), np.zeros((0, 2)))
    with pytest.raises(ValueError, match="multi-hot"):
        multilabel_metrics(np.array([[2, 0]]), np.zeros((1, 2)))


# ---------------------------------------------------------------------------------------------------
# retrieval_recall
# ---------------------------------------------------------------------------------------------------

RET_GALLERY = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [-1.0, 0.0]])
RET_GALLERY_LABELS = np.array([0, 1, 2, 0])


def test_retrieval_hand_example() -> None:
    query = np.array([[2.0, 0.1], [0.0, 3.0], [1.0, -1.0], [0.0, 0.0]])
    query_labels = np.array([1, 1, 2, 0])
    # q0 (class 1): cos to g0 .999, g2 .742, g1 .050, g3 -.999 -> first class-1 item at rank 3
    # q1 (class 1): g1 is the nearest -> rank 1
    # q2 (class 2): g0 .707, g2 0, g1/g3 -.707 -> first class-2 item at rank 2
    # q3 (class 0): zero row, every similarity 0, ties by index -> g0 (class 0) at rank 1
    # R@1 = {q1, q3} = 2/4, R@2 = 3/4, R@3 = 1, R@10 is clipped to G = 4 -> 1
    r = retrieval_recall(query, query_labels, RET_GALLERY, RET_GALLERY_LABELS, ks=(1, 2, 3, 10))
    assert r == pytest.approx({"r@1": 0.5, "r@2": 0.75, "r@3": 1.0, "r@10": 1.0})
    assert all(type(v) is float for v in r.values())


def test_retrieval_default_keys_and_chunking() -> None:
    query = np.array([[2.0, 0.1], [0.0, 3.0], [1.0, -1.0], [0.0, 0.0]])
    query_labels = np.array([1, 1, 2, 0])
    r1 = retrieval_recall(query, query_labels, RET_GALLERY, RET_GALLERY_LABELS)
    r2 = retrieval_recall(query, query_labels, RET_GALLERY, RET_GALLERY_LABELS, chunk=1)
    assert list(r1) == ["r@1", "r@5", "r@10"]
    assert r1 == r2 == pytest.approx({"r@1": 0.5, "r@5": 1.0, "r@10": 1.0})


def test_retrieval_ties_and_missing_class() -> None:
    gallery = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 1.0]])  # g0 and g1 have identical direction
    gallery_labels = np.array([5, 7, 7])
    # q0 (class 7) ties g0 (class 5) and g1 (class 7): lower index g0 first -> hit only from k = 2
    # q1 (class 9) has no same-class gallery item -> miss at every k, even k > G
    query = np.array([[3.0, 0.0], [1.0, 0.0]])
    r = retrieval_recall(query, np.array([7, 9]), gallery, gallery_labels, ks=(1, 2, 100))
    assert r == pytest.approx({"r@1": 0.0, "r@2": 0.5, "r@100": 0.5})


def test_retrieval_multi_hot_labels() -> None:
    gallery = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])
    gallery_labels = np.array([[1, 0, 0], [0, 1, 1], [0, 0, 1]])
    query = np.array([[1.0, 0.2], [0.9, -0.1], [-1.0, 0.1]])
    query_labels = np.array([[0, 0, 1], [1, 1, 0], [0, 1, 0]])
    # q0 {2}: ranking g0 {0}, g1 {1,2} -> shares label 2 at rank 2
    # q1 {0,1}: ranking g0 {0} first -> rank 1
    # q2 {1}: ranking g2 {2}, g1 {1,2} -> rank 2
    r = retrieval_recall(query, query_labels, gallery, gallery_labels, ks=(1, 2, 3))
    assert r == pytest.approx({"r@1": 1 / 3, "r@2": 1.0, "r@3": 1.0})


def _brute_recall(query, query_labels, gallery, gallery_labels, k, multi_hot):
    def unit(v):
        norm = math.sqrt(sum(x * x for x in v))
        return [x / norm for x in v] if norm > 0 else [0.0] * len(v)

    gal = [unit(v) for v in gallery.tolist()]
    hits = 0
    for qv, ql in zip(query.tolist(), query_labels.tolist(), strict=True):
        qu = unit(qv)
        sims = [sum(a * b for a, b in zip(qu, gv, strict=True)) for gv in gal]
        order = sorted(range(len(gal)), key=lambda i, sims=sims: (-sims[i], i))
        for i in order[: min(k, len(gal))]:
            gl = gallery_labels[i].tolist() if multi_hot else gallery_labels[i]
            same = any(a and b for a, b in zip(ql, gl, strict=True)) if multi_hot else gl == ql
            if same:
                hits += 1
                break
    return hits / len(query)


@pytest.mark.parametrize("multi_hot", [False, True])
def test_retrieval_random_against_brute_force(multi_hot: bool) -> None:
    rng = np.random.default_rng(2)
    q, g, e = 40, 60, 8
    query = rng.normal(size=(q, e))
    gallery = rng.normal(size=(g, e))
    query[3] = 0.0  # a zero query row
    if multi_hot:
        query_labels = (rng.random((q, 6)) < 0.15).astype(int)
        gallery_labels = (rng.random((g, 6)) < 0.15).astype(int)
    else:
        query_labels = rng.integers(0, 8, size=q)
        gallery_labels = rng.integers(0, 10, size=g)  # classes 8, 9 only in the gallery
    ks = (1, 3, 5, 10, 200)
    r = retrieval_recall(query, query_labels, gallery, gallery_labels, ks=ks, chunk=7)
    for k in ks:
        expected = _brute_recall(query, query_labels, gallery, gallery_labels, k, multi_hot)
        assert r[f"r@{k}"] == pytest.approx(expected), k


def test_retrieval_errors() -> None:
    emb = np.zeros((2, 3))
    lab = np.array([0, 1])
    with pytest.raises(ValueError, match="dimension"):
        retrieval_recall(emb, lab, np.zeros((2, 4)), lab)
    with pytest.raises(ValueError, match="label counts"):
        retrieval_recall(emb, np.array([0]), emb, lab)
    with pytest.raises(ValueError, match="both be 1-D or both 2-D"):
        retrieval_recall(emb, lab, emb, np.eye(2))
    with pytest.raises(ValueError, match="empty"):
        retrieval_recall(np.zeros((0, 3)), np.array([], dtype=int), emb, lab)
    with pytest.raises(ValueError, match="ks"):
        retrieval_recall(emb, lab, emb, lab, ks=(0,))
    with pytest.raises(ValueError, match="chunk"):
        retrieval_recall(emb, lab, emb, lab, chunk=0)
