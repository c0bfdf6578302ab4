"""Distillation losses against hand-derived values, an independent reference, properties and gradients."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cmkdtool.losses import (
    FEATURE_LOSSES,
    feature_ce,
    feature_clip,
    feature_cosine,
    feature_l1,
    feature_margin,
    feature_mse,
    hinton_kd,
    kd_kl,
    soft_bce_kd,
)

LN2, LN3 = math.log(2.0), math.log(3.0)
KD_LOSSES = [kd_kl, hinton_kd, soft_bce_kd]
ALL_FEATURE = [feature_mse, feature_l1, feature_cosine]  # pointwise: zero when equal
BATCH_FEATURE = [feature_ce, feature_clip, feature_margin]
EVERY_FEATURE = ALL_FEATURE + BATCH_FEATURE


def _rand(*shape: int, seed: int, dtype: torch.dtype = torch.float64, scale: float = 2.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


# ---------------------------------------------------------------- independent references (plain Python / numpy)


def _ref_kd_kl(s: np.ndarray, t: np.ndarray, temperature: float) -> float:
    """KL(p || q) per row with explicit loops over classes, averaged over rows."""
    total = 0.0
    for srow, trow in zip(s, t, strict=True):
        es = [math.exp(v / temperature) for v in srow]
        et = [math.exp(v / temperature) for v in trow]
        q = [v / sum(es) for v in es]
        p = [v / sum(et) for v in et]
        total += sum(pk * math.log(pk / qk) for pk, qk in zip(p, q, strict=True))
    return total / len(s)


def _ref_soft_bce(s: np.ndarray, t: np.ndarray, temperature: float) -> float:
    """Bernoulli KL(p || q) per element, p = sigmoid(t/T), q = sigmoid(s/T), averaged over all elements."""
    terms = []
    for sv, tv in zip(s.ravel(), t.ravel(), strict=True):
        p = 1.0 / (1.0 + math.exp(-tv / temperature))
        q = 1.0 / (1.0 + math.exp(-sv / temperature))
        terms.append(p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q)))
    return sum(terms) / len(terms)


def _ref_feature(name: str, s: np.ndarray, t: np.ndarray) -> float:
    s, t = s.reshape(len(s), -1), t.reshape(len(t), -1)
    per_sample = []
    for si, ti in zip(s, t, strict=True):
        if name == "mse":
            per_sample.append(0.5 * sum((a - b) ** 2 for a, b in zip(si, ti, strict=True)))
        elif name == "l1":
            per_sample.append(sum(abs(a - b) for a, b in zip(si, ti, strict=True)))
        else:
            dot = sum(a * b for a, b in zip(si, ti, strict=True))
            norms = math.sqrt(sum(a * a for a in si)) * math.sqrt(sum(b * b for b in ti))
            per_sample.append(1.0 - dot / norms)
    return sum(per_sample) / len(per_sample)


# ---------------------------------------------------------------- kd_kl / hinton_kd: hand-derived values

# Two samples, three classes, T = 1.
# Sample 1: s = (0, 0, 0)      -> q = (1/3, 1/3, 1/3)
#           t = (ln 2, 0, 0)   -> exp = (2, 1, 1), sum 4 -> p = (1/2, 1/4, 1/4)
#           KL(p||q) = 1/2 ln((1/2)/(1/3)) + 2 * 1/4 ln((1/4)/(1/3)) = 1/2 ln(3/2) + 1/2 ln(3/4) = 1/2 ln(9/8)
# Sample 2: s = (ln 3, 0, 0)   -> exp = (3, 1, 1), sum 5 -> q = (3/5, 1/5, 1/5)
#           t = (0, 0, 0)      -> p = (1/3, 1/3, 1/3)
#           KL(p||q) = 1/3 ln((1/3)/(3/5)) + 2 * 1/3 ln((1/3)/(1/5)) = 1/3 ln(5/9) + 2/3 ln(5/3) = 1/3 ln(125/81)
# batchmean: (1/2 ln(9/8) + 1/3 ln(125/81)) / 2
HAND_S = [[0.0, 0.0, 0.0], [LN3, 0.0, 0.0]]
HAND_T = [[LN2, 0.0, 0.0], [0.0, 0.0, 0.0]]
HAND_KL = (0.5 * math.log(9 / 8) + math.log(125 / 81) / 3) / 2


def test_kd_kl_matches_hand_derived_value():
    # Cross-check the closed form with the explicit sums written out with math.exp / math.log.
    q1, p1 = [1 / 3] * 3, [2 / 4, 1 / 4, 1 / 4]
    q2, p2 = [3 / 5, 1 / 5, 1 / 5], [1 / 3] * 3
    explicit = (
        sum(p * math.log(p / q) for p, q in zip(p1, q1, strict=True))
        + sum(p * math.log(p / q) for p, q in zip(p2, q2, strict=True))
    ) / 2
    assert explicit == pytest.approx(HAND_KL, rel=1e-12)
    got = kd_kl(torch.tensor(HAND_S, dtype=torch.float64), torch.tensor(HAND_T, dtype=torch.float64))
    assert got.item() == pytest.approx(HAND_KL, rel=1e-12)


def test_kd_kl_temperature_divides_logits():
    # Doubling every logit and using T = 2 gives the same softmaxes, hence the same hand value.
    s = torch.tensor(HAND_S, dtype=torch.float64) * 2
    t = torch.tensor(HAND_T, dtype=torch.float64) * 2
    assert kd_kl(s, t, temperature=2.0).item() == pytest.approx(HAND_KL, rel=1e-12)
    # ... and the same logits at T = 1 give a different (larger) value, so the temperature is really used.
    assert kd_kl(s, t, temperature=1.0).item() > HAND_KL * 1.5


def test_hinton_kd_is_t_squared_times_kd_kl_hand_value():
    s = torch.tensor(HAND_S, dtype=torch.float64) * 2
    t = torch.tensor(HAND_T, dtype=torch.float64) * 2
    # T = 2: 2^2 * HAND_KL
    assert hinton_kd(s, t, temperature=2.0).item() == pytest.approx(4 * HAND_KL, rel=1e-12)


def test_hinton_kd_default_temperature_is_four():
    s, t = _rand(5, 7, seed=1), _rand(5, 7, seed=2)
    assert hinton_kd(s, t).item() == pytest.approx(16 * kd_kl(s, t, temperature=4.0).item(), rel=1e-12)


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0, 10.0])
def test_hinton_kd_equals_t_squared_kd_kl(temperature):
    s, t = _rand(6, 5, seed=3), _rand(6, 5, seed=4)
    expected = temperature**2 * kd_kl(s, t, temperature).item()
    assert hinton_kd(s, t, temperature).item() == pytest.approx(expected, rel=1e-12)


def test_hinton_kd_high_temperature_limit_is_logit_matching():
    # Hinton et al. 2015: for T -> inf and zero-mean logits, T^2 KL -> 1/(2K) ||s - t||^2 per sample.
    # The T^2 factor is what makes this limit finite and non-zero.
    s, t = _rand(4, 5, seed=5), _rand(4, 5, seed=6)
    s, t = s - s.mean(1, keepdim=True), t - t.mean(1, keepdim=True)
    k = s.shape[1]
    limit = ((s - t).square().sum(1) / (2 * k)).mean().item()
    assert hinton_kd(s, t, temperature=1000.0).item() == pytest.approx(limit, rel=1e-2)
    # kd_kl alone vanishes in that limit.
    assert kd_kl(s, t, temperature=1000.0).item() < limit * 1e-5


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_kd_kl_matches_independent_loop_reference(temperature):
    s, t = _rand(8, 6, seed=7), _rand(8, 6, seed=8)
    ref = _ref_kd_kl(s.numpy(), t.numpy(), temperature)
    assert kd_kl(s, t, temperature).item() == pytest.approx(ref, rel=1e-10)


# ---------------------------------------------------------------- kd_kl properties


def test_kd_kl_zero_when_logits_equal():
    s = _rand(4, 9, seed=9)
    assert kd_kl(s, s.clone()).item() == pytest.approx(0.0, abs=1e-12)
    assert kd_kl(s, s + 5.0).item() == pytest.approx(0.0, abs=1e-12)


def test_kd_kl_nonnegative_and_positive_when_different():
    for seed in range(10):
        s, t = _rand(3, 4, seed=100 + seed), _rand(3, 4, seed=200 + seed)
        assert kd_kl(s, t).item() > 0


def test_kd_kl_invariant_to_constant_shift_per_row():
    s, t = _rand(3, 5, seed=10), _rand(3, 5, seed=11)
    shift_s = torch.tensor([[3.0], [-7.0], [0.5]], dtype=torch.float64)
    shift_t = torch.tensor([[-2.0], [11.0], [4.0]], dtype=torch.float64)
    base = kd_kl(s, t).item()
    assert kd_kl(s + shift_s, t + shift_t).item() == pytest.approx(base, rel=1e-10)
    # A shift of a single logit (not a whole row) does change it.
    bumped = s.clone()
    bumped[0, 0] += 1.0
    assert kd_kl(bumped, t).item() != pytest.approx(base, rel=1e-6)


def test_kd_kl_is_stable_for_huge_logits():
    s = torch.tensor([[1000.0, 0.0, -1000.0]])
    t = torch.tensor([[999.0, 0.0, -1000.0]])
    out = kd_kl(s, t)
    assert torch.isfinite(out)
    # Both softmaxes are one-hot on class 0 up to e^-999: KL ~ 0.
    assert out.item() == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- soft_bce_kd

# Two samples, two labels, T = 1.
# (0,0): t = 0    -> p = 1/2;  s = ln 3 -> q = 3/(3+1) = 3/4
#        KL = 1/2 ln((1/2)/(3/4)) + 1/2 ln((1/2)/(1/4)) = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3)
# (0,1): t = ln 3 -> p = 3/4;  s = 0    -> q = 1/2
#        KL = 3/4 ln((3/4)/(1/2)) + 1/4 ln((1/4)/(1/2)) = 3/4 ln(3/2) - 1/4 ln 2 = 3/4 ln 3 - ln 2
# (1,0), (1,1): s = t = 0 -> KL = 0
# mean over 4 elements: (1/2 ln(4/3) + 3/4 ln 3 - ln 2) / 4
BCE_S = [[LN3, 0.0], [0.0, 0.0]]
BCE_T = [[0.0, LN3], [0.0, 0.0]]
HAND_BCE = (0.5 * math.log(4 / 3) + 0.75 * LN3 - LN2) / 4


def test_soft_bce_kd_matches_hand_derived_value():
    explicit = (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)) + (
        0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    )
    assert explicit / 4 == pytest.approx(HAND_BCE, rel=1e-12)
    got = soft_bce_kd(torch.tensor(BCE_S, dtype=torch.float64), torch.tensor(BCE_T, dtype=torch.float64))
    assert got.item() == pytest.approx(HAND_BCE, rel=1e-12)


def test_soft_bce_kd_temperature_divides_logits():
    s = torch.tensor(BCE_S, dtype=torch.float64) * 3
    t = torch.tensor(BCE_T, dtype=torch.float64) * 3
    assert soft_bce_kd(s, t, temperature=3.0).item() == pytest.approx(HAND_BCE, rel=1e-12)


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_soft_bce_kd_matches_independent_reference(temperature):
    s, t = _rand(5, 4, seed=12), _rand(5, 4, seed=13)
    ref = _ref_soft_bce(s.numpy(), t.numpy(), temperature)
    assert soft_bce_kd(s, t, temperature).item() == pytest.approx(ref, rel=1e-10)


def test_soft_bce_kd_zero_when_equal_and_positive_otherwise():
    s = _rand(4, 6, seed=14, scale=5.0)
    assert soft_bce_kd(s, s.clone()).item() == pytest.approx(0.0, abs=1e-12)
    t = _rand(4, 6, seed=15, scale=5.0)
    assert soft_bce_kd(s, t).item() > 0
    # Unlike the softmax KL, a constant shift of a row is a real change for independent labels.
    assert soft_bce_kd(s + 1.0, s).item() > 0


def test_soft_bce_kd_is_stable_for_huge_logits():
    s = torch.tensor([[200.0, -200.0]])
    out = soft_bce_kd(s, s.clone())
    assert torch.isfinite(out) and out.item() == pytest.approx(0.0, abs=1e-6)
    out = soft_bce_kd(torch.tensor([[-200.0]]), torch.tensor([[200.0]]))
    # p ~ 1, q ~ e^-200: KL ~ -log q = 200.
    assert out.item() == pytest.approx(200.0, rel=1e-4)


# ---------------------------------------------------------------- feature losses: hand-derived values

# s1 = (1, 0), t1 = (0, 2): d1 = (1, -2), ||d1||^2 = 5, ||d1||_1 = 3, cos = 0       -> 1 - cos = 1
# s2 = (3, 4), t2 = (4, 3): d2 = (-1, 1), ||d2||^2 = 2, ||d2||_1 = 2, cos = 24/25   -> 1 - cos = 1/25
# mse    = (0.5 * 5 + 0.5 * 2) / 2 = 1.75
# l1     = (3 + 2) / 2             = 2.5
# cosine = (1 + 1/25) / 2          = 0.52
FEAT_S = [[1.0, 0.0], [3.0, 4.0]]
FEAT_T = [[0.0, 2.0], [4.0, 3.0]]


@pytest.mark.parametrize(("fn", "expected"), [(feature_mse, 1.75), (feature_l1, 2.5), (feature_cosine, 0.52)])
def test_feature_losses_match_hand_derived_values(fn, expected):
    got = fn(torch.tensor(FEAT_S, dtype=torch.float64), torch.tensor(FEAT_T, dtype=torch.float64))
    assert got.item() == pytest.approx(expected, rel=1e-12)


def test_feature_mse_is_ciba_eq1_divided_by_batch_size():
    # CIBA Eq. 1 sums over the N samples; ours is that sum / N, so duplicating the batch leaves it unchanged.
    s, t = _rand(5, 3, seed=16), _rand(5, 3, seed=17)
    eq1 = 0.5 * sum(torch.sum((s[i] - t[i]) ** 2).item() for i in range(5))
    assert feature_mse(s, t).item() == pytest.approx(eq1 / 5, rel=1e-12)
    assert feature_mse(torch.cat([s, s]), torch.cat([t, t])).item() == pytest.approx(eq1 / 5, rel=1e-12)


@pytest.mark.parametrize("name", ["mse", "l1", "cosine"])
@pytest.mark.parametrize("shape", [(6, 5), (3, 2, 4, 3)])
def test_feature_losses_match_independent_reference(name, shape):
    s, t = _rand(*shape, seed=18), _rand(*shape, seed=19)
    ref = _ref_feature(name, s.numpy(), t.numpy())
    assert FEATURE_LOSSES[name](s, t).item() == pytest.approx(ref, rel=1e-10)


def test_feature_losses_registry_is_exactly_the_six_functions():
    assert FEATURE_LOSSES == {
        "mse": feature_mse,
        "l1": feature_l1,
        "cosine": feature_cosine,
        "ce": feature_ce,
        "clip": feature_clip,
        "margin": feature_margin,
    }


@pytest.mark.parametrize("fn", ALL_FEATURE)
def test_feature_losses_zero_when_equal(fn):
    s = _rand(4, 7, seed=20)
    assert fn(s, s.clone()).item() == pytest.approx(0.0, abs=1e-12)


def test_feature_cosine_is_scale_invariant_and_bounded():
    s, t = _rand(5, 8, seed=21), _rand(5, 8, seed=22)
    base = feature_cosine(s, t).item()
    scale = torch.tensor([[0.1], [2.0], [30.0], [1.0], [7.0]], dtype=torch.float64)
    assert feature_cosine(s * scale, t).item() == pytest.approx(base, rel=1e-10)
    assert feature_cosine(s, -s).item() == pytest.approx(2.0, rel=1e-12)
    assert 0.0 < base < 2.0


def test_feature_cosine_zero_vector_gives_one_and_finite_gradient():
    s = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    t = _rand(2, 3, seed=23)
    out = feature_cosine(s, t)
    assert out.item() == pytest.approx(1.0, abs=1e-12)
    out.backward()
    assert torch.isfinite(s.grad).all()


# ---------------------------------------------------------------- ce / clip / margin: hand-derived values


def test_feature_ce_hand_value():
    # t = (0, 0) -> p' = (1/2, 1/2); s = (0, ln 3) -> p = (1/4, 3/4)
    # CE = -(1/2 ln 1/4 + 1/2 ln 3/4) = 1/2 ln(16/3)
    s = torch.tensor([[0.0, LN3]], dtype=torch.float64)
    t = torch.zeros(1, 2, dtype=torch.float64)
    assert feature_ce(s, t).item() == pytest.approx(0.5 * math.log(16 / 3), rel=1e-12)
    # T = 2: s/T = (0, ln 3 / 2) -> p = (1, sqrt 3) / (1 + sqrt 3); p' unchanged
    r3 = math.sqrt(3.0)
    expected = -(0.5 * math.log(1 / (1 + r3)) + 0.5 * math.log(r3 / (1 + r3)))
    assert feature_ce(s, t, temperature=2.0).item() == pytest.approx(expected, rel=1e-12)


def test_feature_ce_is_minimal_at_the_teacher_with_the_teacher_entropy():
    t = _rand(4, 6, seed=60)
    p = torch.softmax(t, 1)
    entropy = -(p * p.log()).sum(1).mean().item()
    assert feature_ce(t.clone(), t).item() == pytest.approx(entropy, rel=1e-12)
    assert feature_ce(t + 3.0, t).item() == pytest.approx(entropy, rel=1e-12)  # softmax is shift-invariant
    assert feature_ce(_rand(4, 6, seed=61), t).item() > entropy


def test_feature_ce_analytic_gradient():
    # App. E.5: d CE / d s_i = (p_i - p'_i) / (B T)
    b, temperature = 5, 1.5
    s = _rand(b, 4, seed=62).requires_grad_(True)
    t = _rand(b, 4, seed=63)
    feature_ce(s, t, temperature).backward()
    expected = (torch.softmax(s.detach() / temperature, 1) - torch.softmax(t / temperature, 1)) / (b * temperature)
    torch.testing.assert_close(s.grad, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("scale", [1.0, 5.0])
def test_feature_clip_hand_value(scale):
    # s = t = I (2 x 2): logits = scale * I; each row's CE = -log(e^k / (e^k + 1)) = log(1 + e^-k), both ways
    eye = torch.eye(2, dtype=torch.float64)
    assert feature_clip(eye * 3.0, eye, scale).item() == pytest.approx(math.log1p(math.exp(-scale)), rel=1e-12)


def _ref_clip(s: np.ndarray, t: np.ndarray, scale: float) -> float:
    u = [row / np.linalg.norm(row) for row in s]
    v = [row / np.linalg.norm(row) for row in t]
    b = len(u)
    logit = [[scale * float(np.dot(u[i], v[j])) for j in range(b)] for i in range(b)]
    rows = [-logit[i][i] + math.log(sum(math.exp(x) for x in logit[i])) for i in range(b)]
    cols = [-logit[j][j] + math.log(sum(math.exp(logit[i][j]) for i in range(b))) for j in range(b)]
    return 0.5 * (sum(rows) / b + sum(cols) / b)


def _ref_margin(s: np.ndarray, t: np.ndarray, m: float) -> float:
    def cos(a, b):
        return float(np.dot(a, b) / (np.linalg.norm(a) * np.linalg.norm(b)))

    b = len(s)
    total = 0.0
    for i in range(b):
        for j in range(b):
            if i != j:
                total += 0.5 * max(0.0, m - cos(s[i], t[i]) + cos(s[i], t[j]))  # teacher j outranks teacher i?
                total += 0.5 * max(0.0, m - cos(s[i], t[i]) + cos(s[j], t[i]))  # student j outranks student i?
    return total / (b * (b - 1))


def test_feature_clip_and_margin_match_independent_references():
    s, t = _rand(6, 5, seed=64), _rand(6, 5, seed=65)
    assert feature_clip(s, t, 3.0).item() == pytest.approx(_ref_clip(s.numpy(), t.numpy(), 3.0), rel=1e-10)
    for m in (0.2, 1.0):
        assert feature_margin(s, t, m).item() == pytest.approx(_ref_margin(s.numpy(), t.numpy(), m), rel=1e-10)


def test_feature_margin_hand_value():
    # u = (1,0), (0,1); v = (1,0), (1,1)/sqrt2: c = [[1, r], [0, r]], r = 1/sqrt2; m = 0.2
    # pairs (i, j): (0,1): max(0, .2-1+r) = 0, max(0, .2-1+0) = 0; (1,0): max(0, .2-r+0) = 0, max(0, .2-r+r) = .2
    # loss = 1/2 * 0.2 / (2 * 1) = 0.05
    s = torch.tensor([[1.0, 0.0], [0.0, 2.0]], dtype=torch.float64)
    t = torch.tensor([[3.0, 0.0], [1.0, 1.0]], dtype=torch.float64)
    assert feature_margin(s, t, 0.2).item() == pytest.approx(0.05, rel=1e-12)
    assert feature_margin(s, t, 0.0).item() == pytest.approx(0.0, abs=1e-15)


def test_contrastive_losses_are_scale_invariant_and_zero_without_negatives():
    s, t = _rand(4, 3, seed=66), _rand(4, 3, seed=67)
    for fn in (feature_clip, feature_margin):
        assert fn(s * 7.0, t * 0.1).item() == pytest.approx(fn(s, t).item(), rel=1e-10)
        assert fn(s[:1], t[:1]).item() == 0.0


def test_feature_clip_gradient_reaches_a_learnable_scale():
    s, t = _rand(5, 4, seed=68), _rand(5, 4, seed=69)
    log_scale = torch.tensor(math.log(1 / 0.07), dtype=torch.float64, requires_grad=True)
    feature_clip(s, t, log_scale.exp()).backward()
    assert log_scale.grad is not None and log_scale.grad.abs() > 0
    assert torch.autograd.gradcheck(lambda k: feature_clip(s, t, k.exp()), (log_scale,), eps=1e-6, atol=1e-7)


def test_bad_temperature_and_margin_are_refused():
    s = _rand(2, 3, seed=70)
    with pytest.raises(ValueError, match="temperature must be positive"):
        feature_ce(s, s, temperature=0.0)
    with pytest.raises(ValueError, match="margin must be non-negative"):
        feature_margin(s, s, margin=-0.1)


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize("fn", KD_LOSSES + EVERY_FEATURE, ids=lambda f: f.__name__)
def test_gradcheck_wrt_student(fn):
    s = _rand(3, 4, seed=24).requires_grad_(True)
    t = _rand(3, 4, seed=25)
    assert torch.autograd.gradcheck(lambda x: fn(x, t), (s,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("fn", [kd_kl, hinton_kd, soft_bce_kd], ids=lambda f: f.__name__)
def test_gradcheck_wrt_student_with_temperature(fn):
    s = _rand(3, 4, seed=26).requires_grad_(True)
    t = _rand(3, 4, seed=27)
    assert torch.autograd.gradcheck(lambda x: fn(x, t, 2.5), (s,), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_kd_kl_analytic_gradient(temperature):
    # d kd_kl / d s = (softmax(s/T) - softmax(t/T)) / (T * B)
    b = 5
    s = _rand(b, 4, seed=28).requires_grad_(True)
    t = _rand(b, 4, seed=29)
    kd_kl(s, t, temperature).backward()
    expected = (torch.softmax(s.detach() / temperature, 1) - torch.softmax(t / temperature, 1)) / (temperature * b)
    torch.testing.assert_close(s.grad, expected, rtol=1e-10, atol=1e-12)


def test_hinton_kd_analytic_gradient():
    # d hinton_kd / d s = T^2 (q - p) / (T * B) = T (q - p) / B
    b, temperature = 4, 4.0
    s = _rand(b, 3, seed=30).requires_grad_(True)
    t = _rand(b, 3, seed=31)
    hinton_kd(s, t, temperature).backward()
    expected = temperature * (torch.softmax(s.detach() / temperature, 1) - torch.softmax(t / temperature, 1)) / b
    torch.testing.assert_close(s.grad, expected, rtol=1e-10, atol=1e-12)


def test_soft_bce_kd_analytic_gradient():
    # d soft_bce_kd / d s = (sigmoid(s/T) - sigmoid(t/T)) / (T * B * K)
    b, k, temperature = 3, 5, 2.0
    s = _rand(b, k, seed=32).requires_grad_(True)
    t = _rand(b, k, seed=33)
    soft_bce_kd(s, t, temperature).backward()
    expected = (torch.sigmoid(s.detach() / temperature) - torch.sigmoid(t / temperature)) / (temperature * b * k)
    torch.testing.assert_close(s.grad, expected, rtol=1e-10, atol=1e-12)


def test_feature_mse_analytic_gradient():
    # d feature_mse / d s = (s - t) / B
    b = 6
    s = _rand(b, 4, seed=34).requires_grad_(True)
    t = _rand(b, 4, seed=35)
    feature_mse(s, t).backward()
    torch.testing.assert_close(s.grad, (s.detach() - t) / b, rtol=1e-12, atol=1e-14)


def test_feature_l1_analytic_gradient():
    # d feature_l1 / d s = sign(s - t) / B
    b = 6
    s = _rand(b, 4, seed=36).requires_grad_(True)
    t = _rand(b, 4, seed=37)
    feature_l1(s, t).backward()
    torch.testing.assert_close(s.grad, torch.sign(s.detach() - t) / b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("fn", KD_LOSSES + EVERY_FEATURE, ids=lambda f: f.__name__)
def test_frozen_teacher_needs_no_gradient(fn):
    s = _rand(3, 4, seed=38, dtype=torch.float32).requires_grad_(True)
    t = _rand(3, 4, seed=39, dtype=torch.float32)
    assert not t.requires_grad
    out = fn(s, t)
    assert out.requires_grad and out.ndim == 0
    out.backward()
    assert t.grad is None
    assert s.grad is not None and torch.isfinite(s.grad).all() and s.grad.abs().sum() > 0


@pytest.mark.parametrize("fn", KD_LOSSES + EVERY_FEATURE, ids=lambda f: f.__name__)
def test_teacher_is_not_detached(fn):
    # Pure functions: detaching is the method's decision (online / mutual distillation trains both sides).
    s = _rand(3, 4, seed=40)
    t = _rand(3, 4, seed=41).requires_grad_(True)
    fn(s, t).backward()
    assert t.grad is not None and t.grad.abs().sum() > 0


# ---------------------------------------------------------------- precision


@pytest.mark.parametrize("fn", KD_LOSSES + EVERY_FEATURE, ids=lambda f: f.__name__)
def test_bf16_inputs_give_float32_result(fn):
    s = _rand(4, 6, seed=42, dtype=torch.bfloat16)
    t = _rand(4, 6, seed=43, dtype=torch.bfloat16)
    out = fn(s, t)
    assert out.dtype == torch.float32
    # Same as computing on the float32 upcast of the very same bf16 values.
    torch.testing.assert_close(out, fn(s.float(), t.float()), rtol=0, atol=0)


@pytest.mark.parametrize("fn", KD_LOSSES + EVERY_FEATURE, ids=lambda f: f.__name__)
def test_under_bf16_autocast_result_is_float32_and_gradient_flows(fn):
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 4)
    x = torch.randn(3, 5)
    t = torch.randn(3, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = layer(x)
        assert s.dtype == torch.bfloat16
        out = fn(s, t)
    assert out.dtype == torch.float32
    out.backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
    assert layer.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("fn", KD_LOSSES + EVERY_FEATURE, ids=lambda f: f.__name__)
def test_float64_stays_float64(fn):
    assert fn(_rand(2, 3, seed=44), _rand(2, 3, seed=45)).dtype == torch.float64


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("fn", EVERY_FEATURE, ids=lambda f: f.__name__)
def test_feature_shape_mismatch_names_both_shapes_and_the_fix(fn):
    with pytest.raises(ValueError, match=r"student features \(8, 16\) and teacher features \(8, 32\).*projector"):
        fn(torch.zeros(8, 16), torch.zeros(8, 32))


@pytest.mark.parametrize("fn", KD_LOSSES, ids=lambda f: f.__name__)
def test_logits_shape_mismatch_names_both_shapes(fn):
    with pytest.raises(ValueError, match=r"student logits \(4, 10\) and teacher logits \(4, 5\)"):
        fn(torch.zeros(4, 10), torch.zeros(4, 5))


@pytest.mark.parametrize("fn", KD_LOSSES, ids=lambda f: f.__name__)
def test_logits_must_be_2d(fn):
    with pytest.raises(ValueError, match="2-D"):
        fn(torch.zeros(2, 3, 4), torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="2-D"):
        fn(torch.zeros(3), torch.zeros(3))


@pytest.mark.parametrize("fn", ALL_FEATURE, ids=lambda f: f.__name__)
def test_features_must_have_a_batch_and_feature_dimension(fn):
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        fn(torch.zeros(4), torch.zeros(4))


@pytest.mark.parametrize("fn", KD_LOSSES + EVERY_FEATURE, ids=lambda f: f.__name__)
def test_empty_batch_is_rejected(fn):
    with pytest.raises(ValueError, match="empty batch"):
        fn(torch.zeros(0, 3), torch.zeros(0, 3))


@pytest.mark.parametrize("fn", KD_LOSSES, ids=lambda f: f.__name__)
@pytest.mark.parametrize("temperature", [0.0, -1.0, float("inf"), float("nan")])
def test_bad_temperature_is_rejected(fn, temperature):
    with pytest.raises(ValueError, match="temperature"):
        fn(torch.zeros(2, 3), torch.zeros(2, 3), temperature)


# ---------------------------------------------------------------- FeatureCriterion (options bound to a loss)


def test_feature_criterion_binds_each_loss_option():
    from cmkdtool.nn.criteria import FeatureCriterion

    s, t = _rand(5, 4, seed=80), _rand(5, 4, seed=81)
    assert FeatureCriterion("ce", temperature=2.0)(s, t).item() == pytest.approx(feature_ce(s, t, 2.0).item())
    assert FeatureCriterion("ce")(s, t).item() == pytest.approx(feature_ce(s, t, 1.0).item())
    assert FeatureCriterion("margin", margin=0.5)(s, t).item() == pytest.approx(feature_margin(s, t, 0.5).item())
    assert FeatureCriterion("mse", temperature=3.0)(s, t).item() == pytest.approx(feature_mse(s, t).item())
    learned = FeatureCriterion("clip")  # tau starts at CLIP's 0.07 and is a parameter
    assert learned(s, t).item() == pytest.approx(feature_clip(s, t, 1 / 0.07).item(), rel=1e-5)
    assert [p.shape for p in learned.parameters()] == [torch.Size([])]
    fixed = FeatureCriterion("clip", temperature=0.5, learn_temperature=False)
    assert fixed(s, t).item() == pytest.approx(feature_clip(s, t, 2.0).item(), rel=1e-6)
    assert not list(fixed.parameters())
    with torch.no_grad():
        learned.log_scale.fill_(10.0)  # 1/tau is clamped at 100, as in CLIP
    assert learned.scale().item() == pytest.approx(100.0, rel=1e-6)


def test_feature_criterion_refuses_bad_options():
    from cmkdtool.errors import CmkdUsageError
    from cmkdtool.nn.criteria import FeatureCriterion

    for kwargs, match in (({"temperature": 0.0}, "--temperature must be positive"), ({"margin": -1.0}, "--margin")):
        with pytest.raises(CmkdUsageError, match=match):
            FeatureCriterion("ce", **kwargs)
    with pytest.raises(CmkdUsageError, match="unknown feature loss 'nosuch'"):
        FeatureCriterion("nosuch")
