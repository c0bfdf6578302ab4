"""Tests for cmkdtool.data.synth: the MFH (App. B.2 Eq. 27) and CIBA (Sec. 3.4 Eq. 4) generators."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cmkdtool.data.synth import SynthConfigError, SynthData, synth_mfh, synth_orthogonal
from cmkdtool.errors import CmkdUsageError

# ---------------------------------------------------------------------------------------------- common


def _check_layout(data: SynthData, dim_a: int, dim_b: int, sizes: tuple[int, int, int]) -> None:
    n = sum(sizes)
    assert data.xa.shape == (n, dim_a) and data.xa.dtype == np.float32
    assert data.xb.shape == (n, dim_b) and data.xb.dtype == np.float32
    assert data.label.shape == (n,) and data.label.dtype == np.int64
    assert data.split.shape == (n,) and data.ids.shape == (n,)
    expected_split = ["train"] * sizes[0] + ["val"] * sizes[1] + ["test"] * sizes[2]
    assert data.split.tolist() == expected_split
    assert len(set(data.ids.tolist())) == n
    for name, size in zip(("train", "val", "test"), sizes, strict=True):
        ids = data.ids[data.split == name].tolist()
        assert ids == [f"{name}-{i:06d}" for i in range(size)]
    assert set(np.unique(data.label).tolist()) <= set(range(len(data.class_names)))
    assert len(data) == n
    # meta is plain JSON and survives a round trip unchanged
    assert json.loads(json.dumps(data.meta)) == data.meta


def _rows(data: SynthData, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mask = data.split == split
    return data.xa[mask], data.xb[mask], data.label[mask]


# ---------------------------------------------------------------------------------------------- MFH


def test_mfh_layout_and_meta() -> None:
    data = synth_mfh(n_train=30, n_val=20, n_test=50)
    _check_layout(data, 50, 50, (30, 20, 50))
    meta = data.meta
    assert data.class_names == ["0", "1"]
    assert meta["generator"] == "mfh"
    for key in ("delta", "J1", "J2", "channels_a", "channels_b", "general_a", "general_b", "specific_a",
                "specific_b", "gamma", "alpha", "beta"):  # fmt: skip
        assert key in meta
    assert meta["params"]["dim_a"] == 50 and meta["params"]["n_test"] == 50
    # default: gamma mode with gamma = 0.5
    assert meta["mode"] == "gamma" and meta["gamma"] == 0.5


@pytest.mark.parametrize("positions", ["random", "first"])
@pytest.mark.parametrize(
    "kwargs",
    [
        {"gamma": 0.5},
        {"gamma": 0.0},
        {"gamma": 1.0},
        {"overlap": 4, "n_a": 10, "n_b": 10},
        {"overlap": 0, "n_a": 10, "n_b": 10},
        {"overlap": 3, "n_a": 5, "n_b": 12},
    ],
)
def test_mfh_shared_channels_hold_the_same_decisive_features(positions: str, kwargs: dict) -> None:
    data = synth_mfh(dim_a=25, dim_b=50, positions=positions, n_train=40, n_val=0, n_test=40, **kwargs)
    meta = data.meta
    j1, j2, ch_a, ch_b = meta["J1"], meta["J2"], meta["channels_a"], meta["channels_b"]
    assert len(ch_a) == len(j1) == len(set(ch_a)) and len(ch_b) == len(j2) == len(set(ch_b))
    assert ch_a == sorted(ch_a) and ch_b == sorted(ch_b)
    if positions == "first":
        assert ch_a == list(range(len(j1))) and ch_b == list(range(len(j2)))
    # modality-general: x*_{J1 ∩ J2} sits in both modalities
    np.testing.assert_array_equal(data.xa[:, meta["general_a"]], data.xb[:, meta["general_b"]])
    shared = sorted(set(j1) & set(j2))
    assert meta["general_dims"] == shared and len(meta["general_a"]) == len(shared)
    for dim in shared:
        a = ch_a[j1.index(dim)]
        b = ch_b[j2.index(dim)]
        np.testing.assert_array_equal(data.xa[:, a], data.xb[:, b])
    # general + specific partition the decisive channels of each modality
    assert sorted(meta["general_a"] + meta["specific_a"]) == ch_a
    assert sorted(meta["general_b"] + meta["specific_b"]) == ch_b
    assert len(meta["specific_a"]) == len(set(j1) - set(j2))
    assert len(meta["specific_b"]) == len(set(j2) - set(j1))
    # specific channels are not copies of any channel of the other modality
    for a in meta["specific_a"]:
        assert not np.any(np.all(data.xb == data.xa[:, [a]], axis=0))


@pytest.mark.parametrize("positions", ["random", "first"])
@pytest.mark.parametrize("hyperplane", ["randn", "ones"])
def test_mfh_labels_follow_eq27_gamma_mode(positions: str, hyperplane: str) -> None:
    # gamma mode: J1 = all d decisive dims, so x* is fully visible in xa
    data = synth_mfh(gamma=0.25, positions=positions, hyperplane=hyperplane, n_train=300, n_val=0, n_test=300)
    meta = data.meta
    assert meta["J1"] == list(range(meta["d"]))
    delta = np.asarray(meta["delta"])
    if hyperplane == "ones":
        np.testing.assert_array_equal(delta, np.ones(20))
    xstar = data.xa[:, meta["channels_a"]].astype(np.float64)
    np.testing.assert_array_equal(data.label, (xstar @ delta > 0).astype(np.int64))
    # labels are roughly balanced
    assert 0.4 < data.label.mean() < 0.6


def test_mfh_labels_follow_eq27_overlap_mode() -> None:
    # d = 20 = |J1 ∪ J2|: x* is visible across both modalities (J1 from xa, J2 \ J1 from xb)
    data = synth_mfh(decisive=20, n_a=12, n_b=10, overlap=2, n_train=200, n_val=0, n_test=200)
    meta = data.meta
    assert meta["unobserved"] == []
    xstar = np.empty((len(data), 20))
    xstar[:, meta["J1"]] = data.xa[:, meta["channels_a"]]
    xstar[:, meta["J2"]] = data.xb[:, meta["channels_b"]]
    np.testing.assert_array_equal(data.label, (xstar @ np.asarray(meta["delta"]) > 0).astype(np.int64))


@pytest.mark.parametrize(("overlap", "gamma"), [(0, 0.0), (2, 0.11), (4, 0.25), (6, 0.43), (8, 0.67), (10, 1.0)])
def test_mfh_vary_gamma_setting_matches_paper(overlap: int, gamma: float) -> None:
    # App. B.2 setting (1): d1 = 25, d2 = 50, d = 20, |J1| = |J2| = 10, |J1 ∩ J2| = 0, 2, ..., 10
    data = synth_mfh(dim_a=25, dim_b=50, decisive=20, n_a=10, n_b=10, overlap=overlap, n_train=4, n_val=0, n_test=4)
    meta = data.meta
    assert meta["mode"] == "overlap"
    assert meta["J1"] == list(range(10)) and meta["J2"] == list(range(10 - overlap, 20 - overlap))
    assert round(meta["gamma"], 2) == gamma
    assert meta["gamma"] == pytest.approx(overlap / (20 - overlap))
    assert meta["alpha"] == pytest.approx((1 - meta["gamma"]) / 2)
    assert meta["beta"] == pytest.approx((1 - meta["gamma"]) / 2)
    assert len(meta["unobserved"]) == overlap


@pytest.mark.parametrize("gamma", [0.25, 0.5, 0.75, 0.0, 1.0])
def test_mfh_gamma_mode_table2_setting(gamma: float) -> None:
    data = synth_mfh(gamma=gamma, n_train=4, n_val=0, n_test=4)
    meta = data.meta
    d = meta["d"]
    assert meta["n_a"] == d and meta["J1"] == list(range(d))
    assert set(meta["J2"]) <= set(meta["J1"]) and meta["n_b"] == meta["overlap"] == round(gamma * d)
    assert meta["gamma"] == pytest.approx(gamma)
    assert meta["beta"] == 0.0
    assert meta["alpha"] == pytest.approx(1 - gamma)
    assert meta["gamma_requested"] == gamma


@pytest.mark.parametrize(("d", "alpha"), [(10, 0.0), (20, 0.5), (30, 0.67), (40, 0.75), (50, 0.80)])
def test_mfh_vary_alpha_setting_matches_paper(d: int, alpha: float) -> None:
    # App. B.2 setting (2): d1 = d2 = 50, |J2| = 10 inside J1, d = |J1 ∪ J2| growing, beta = 0
    data = synth_mfh(dim_a=50, dim_b=50, decisive=d, gamma=10 / d, n_train=4, n_val=0, n_test=4)
    meta = data.meta
    assert meta["n_b"] == 10
    assert round(meta["alpha"], 2) == alpha
    assert meta["beta"] == 0.0 and meta["gamma"] == pytest.approx(1 - meta["alpha"])


def test_mfh_gamma_rounds_half_up() -> None:
    assert synth_mfh(decisive=5, gamma=0.5, n_train=2, n_val=0, n_test=0).meta["n_b"] == 3
    assert synth_mfh(decisive=20, gamma=0.43, n_train=2, n_val=0, n_test=0).meta["n_b"] == 9


def test_mfh_overlap_defaults() -> None:
    meta = synth_mfh(overlap=4, n_train=2, n_val=0, n_test=0).meta
    assert (meta["n_a"], meta["n_b"]) == (10, 10)
    meta = synth_mfh(n_a=20, n_b=5, n_train=2, n_val=0, n_test=0).meta  # least overlap that fits
    assert meta["overlap"] == 5 and set(meta["J2"]) <= set(meta["J1"])


def test_mfh_deterministic_per_seed() -> None:
    kwargs = {"n_train": 50, "n_val": 20, "n_test": 60}
    a, b = synth_mfh(seed=3, **kwargs), synth_mfh(seed=3, **kwargs)
    for name in ("xa", "xb", "label", "split", "ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.meta == b.meta
    c = synth_mfh(seed=4, **kwargs)
    assert a.meta["delta"] != c.meta["delta"]
    assert not np.array_equal(a.xa, c.xa)


def test_mfh_test_seed_changes_only_test_rows() -> None:
    kwargs = {"n_train": 50, "n_val": 20, "n_test": 60, "seed": 1}
    base = synth_mfh(**kwargs)
    other = synth_mfh(test_seed=123, **kwargs)
    again = synth_mfh(test_seed=123, **kwargs)
    for split in ("train", "val"):
        for x, y in zip(_rows(base, split), _rows(other, split), strict=True):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(_rows(base, "test")[0], _rows(other, "test")[0])
    np.testing.assert_array_equal(other.xa, again.xa)
    assert base.meta["delta"] == other.meta["delta"]
    assert base.meta["channels_a"] == other.meta["channels_a"]
    # n_test does not move the other splits either
    bigger = synth_mfh(**{**kwargs, "n_test": 90})
    np.testing.assert_array_equal(_rows(base, "train")[0], _rows(bigger, "train")[0])


def test_mfh_hyperplane_does_not_move_positions() -> None:
    a = synth_mfh(hyperplane="randn", n_train=5, n_val=0, n_test=0)
    b = synth_mfh(hyperplane="ones", n_train=5, n_val=0, n_test=0)
    assert a.meta["channels_a"] == b.meta["channels_a"] and a.meta["channels_b"] == b.meta["channels_b"]
    np.testing.assert_array_equal(a.xa, b.xa)


def test_mfh_noise_channels_are_standard_normal() -> None:
    data = synth_mfh(gamma=0.5, n_train=4000, n_val=0, n_test=0)
    rest = np.setdiff1d(np.arange(50), data.meta["channels_a"])
    ms = (data.xa[:, rest].astype(np.float64) ** 2).mean(axis=0)
    assert np.all(np.abs(ms - 1) < 0.1)
    assert np.abs(data.xa.mean()) < 0.02


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"gamma": 0.5, "overlap": 2}, "gamma"),
        ({"gamma": 0.5, "n_a": 10}, "gamma"),
        ({"gamma": 1.5}, "gamma"),
        ({"gamma": -0.1}, "gamma"),
        ({"dim_a": 10}, "dim_a"),  # gamma mode: n_a = d = 20 > 10
        ({"dim_b": 5, "gamma": 0.5}, "dim_b"),
        ({"n_a": 25}, "n_a"),
        ({"n_a": 10, "n_b": 10, "overlap": 11}, "overlap"),
        ({"n_a": 15, "n_b": 10, "overlap": 2}, "overlap"),  # J2 = [13, 23) leaves [0, 20)
        ({"n_a": 0, "n_b": 0}, "n_a"),
        ({"hyperplane": "zeros"}, "hyperplane"),
        ({"positions": "last"}, "positions"),
        ({"n_train": -1}, "n_train"),
        ({"decisive": 0}, "decisive"),
        ({"seed": -1}, "seed"),
        ({"test_seed": 1.5}, "test_seed"),
    ],
)
def test_mfh_errors(kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option) as info:
        synth_mfh(**kwargs)
    assert isinstance(info.value, CmkdUsageError) and isinstance(info.value, SynthConfigError)
    assert str(info.value).count("\n") == 0


# ---------------------------------------------------------------------------------------------- CIBA


def _parts(data: SynthData, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    dg = data.meta["D_g"]
    xa, xb, _ = _rows(data, split)
    return xa[:, :dg].astype(np.float64), xa[:, dg:].astype(np.float64), xb[:, dg:].astype(np.float64)


def _scores(data: SynthData, wg: float, wa: float, wb: float) -> np.ndarray:
    meta = data.meta
    dg, ds = meta["D_g"], meta["D_s"]
    g = data.xa[:, :dg].astype(np.float64)
    s_a = data.xa[:, dg:].astype(np.float64)
    s_b = data.xb[:, dg:].astype(np.float64)
    score = np.zeros((len(data), len(meta["u"])))
    if dg:
        score += wg * g @ np.asarray(meta["u"]).T / np.sqrt(dg)
    if ds:
        score += wa * s_a @ np.asarray(meta["v"]).T / np.sqrt(ds)
        score += wb * s_b @ np.asarray(meta["w"]).T / np.sqrt(ds)
    return score


def _labels(score: np.ndarray) -> np.ndarray:
    if score.shape[1] == 1:
        return (score[:, 0] > 0).astype(np.int64)
    return score.argmax(axis=1).astype(np.int64)


def test_orthogonal_layout_and_meta() -> None:
    data = synth_orthogonal(n_train=200, n_val=150, n_test=160)
    _check_layout(data, 64, 64, (200, 150, 160))
    meta = data.meta
    assert data.class_names == ["0", "1"]
    assert meta["generator"] == "orthogonal" and meta["D_g"] == 16 and meta["D_s"] == 48
    assert meta["general_a"] == meta["general_b"] == list(range(16))
    assert meta["specific_a"] == meta["specific_b"] == list(range(16, 64))
    assert np.asarray(meta["u"]).shape == (1, 16) and np.asarray(meta["v"]).shape == (1, 48)
    # Eq. 4: the first D_g channels (G) are shared, the rest (S' vs S) are not
    np.testing.assert_array_equal(data.xa[:, :16], data.xb[:, :16])
    assert not np.allclose(data.xa[:, 16:], data.xb[:, 16:])


@pytest.mark.parametrize("general", [0, 5, 16, 20])
def test_orthogonal_parts_are_orthogonal_on_every_split(general: int) -> None:
    data = synth_orthogonal(dim=20, general=general, n_train=300, n_val=60, n_test=100)
    for split in ("train", "val", "test"):
        g, s_a, s_b = _parts(data, split)
        n = g.shape[0]
        m = np.concatenate([g, s_a, s_b], axis=1)  # n x (D_g + 2 D_s)
        gram = m.T @ m / n
        # rows of M = [G; S'; S] are orthonormal after the sqrt(n) scaling: G S'^T = G S^T = S S'^T = O
        assert np.abs(gram - np.eye(gram.shape[0])).max() < 1e-5
        if general and general < 20:
            assert np.abs(g.T @ s_a).max() / n < 1e-5
            assert np.abs(g.T @ s_b).max() / n < 1e-5
        if general < 20:
            assert np.abs(s_a.T @ s_b).max() / n < 1e-5
        # unit mean square per channel, and zero mean: orthogonality survives the centring models apply
        np.testing.assert_allclose((m**2).mean(axis=0), 1.0, atol=1e-5)
        np.testing.assert_allclose(m.mean(axis=0), 0.0, atol=1e-5)


def test_orthogonal_relaxed_is_not_orthogonal() -> None:
    data = synth_orthogonal(dim=20, general=8, orthogonalize=False, n_train=500, n_val=0, n_test=0)
    g, s_a, s_b = _parts(data, "train")
    n = g.shape[0]
    assert np.abs(g.T @ s_a).max() / n > 1e-2
    assert np.abs(s_a.T @ s_b).max() / n > 1e-2
    ms = (np.concatenate([g, s_a, s_b], axis=1) ** 2).mean(axis=0)
    assert np.all(np.abs(ms - 1) < 0.25) and not np.allclose(ms, 1.0, atol=1e-5)
    np.testing.assert_array_equal(data.xa[:, :8], data.xb[:, :8])


@pytest.mark.parametrize("orthogonalize", [True, False])
@pytest.mark.parametrize(
    "weights", [(1.0, 1.0, 1.0), (1.0, 0.0, 0.0), (0.0, 1.0, 0.0), (0.0, 0.0, 2.0), (2.0, 0.5, 1.0)]
)
def test_orthogonal_label_rule(orthogonalize: bool, weights: tuple[float, float, float]) -> None:
    wg, wa, wb = weights
    data = synth_orthogonal(
        dim=16, general=6, weight_general=wg, weight_specific_a=wa, weight_specific_b=wb,
        orthogonalize=orthogonalize, n_train=400, n_val=0, n_test=100,
    )  # fmt: skip
    np.testing.assert_array_equal(data.label, _labels(_scores(data, wg, wa, wb)))
    assert 0.3 < data.label.mean() < 0.7


def test_orthogonal_general_only_labels_depend_on_g_alone() -> None:
    data = synth_orthogonal(dim=16, general=6, weight_specific_a=0.0, weight_specific_b=0.0,
                            n_train=400, n_val=0, n_test=0)  # fmt: skip
    g = data.xa[:, :6].astype(np.float64)
    u = np.asarray(data.meta["u"])[0]
    np.testing.assert_array_equal(data.label, (g @ u > 0).astype(np.int64))
    # the hyperplanes do not depend on the weights, and the features not on the label rule
    full = synth_orthogonal(dim=16, general=6, n_train=400, n_val=0, n_test=0)
    assert full.meta["u"] == data.meta["u"]
    np.testing.assert_array_equal(full.xa, data.xa)
    assert not np.array_equal(full.label, data.label)


@pytest.mark.parametrize("num_classes", [3, 5])
def test_orthogonal_multiclass_argmax(num_classes: int) -> None:
    data = synth_orthogonal(dim=12, general=4, num_classes=num_classes, n_train=600, n_val=0, n_test=0)
    assert data.class_names == [str(c) for c in range(num_classes)]
    assert np.asarray(data.meta["u"]).shape == (num_classes, 4)
    np.testing.assert_array_equal(data.label, _labels(_scores(data, 1.0, 1.0, 1.0)))
    counts = np.bincount(data.label, minlength=num_classes)
    assert counts.min() > 0.3 * 600 / num_classes


def test_orthogonal_extreme_general() -> None:
    full = synth_orthogonal(dim=8, general=8, n_train=50, n_val=0, n_test=20)
    np.testing.assert_array_equal(full.xa, full.xb)  # D_s = 0: the modalities coincide
    assert full.meta["specific_a"] == [] and full.meta["D_s"] == 0
    np.testing.assert_array_equal(full.label, _labels(_scores(full, 1.0, 1.0, 1.0)))
    none = synth_orthogonal(dim=8, general=0, n_train=50, n_val=0, n_test=20)
    assert none.meta["general_a"] == [] and none.meta["D_g"] == 0
    g, s_a, s_b = _parts(none, "train")
    assert g.shape[1] == 0 and np.abs(s_a.T @ s_b).max() / 50 < 1e-5
    np.testing.assert_array_equal(none.label, _labels(_scores(none, 1.0, 1.0, 1.0)))


def test_orthogonal_deterministic_and_split_seeds() -> None:
    kwargs = {"dim": 10, "general": 4, "n_train": 80, "n_val": 40, "n_test": 50, "seed": 7}
    a, b = synth_orthogonal(**kwargs), synth_orthogonal(**kwargs)
    for name in ("xa", "xb", "label", "split", "ids"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.meta == b.meta
    c = synth_orthogonal(test_seed=99, **kwargs)
    for split in ("train", "val"):
        for x, y in zip(_rows(a, split), _rows(c, split), strict=True):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(_rows(a, "test")[0], _rows(c, "test")[0])
    assert a.meta["u"] == c.meta["u"]
    d = synth_orthogonal(**{**kwargs, "seed": 8})
    assert a.meta["u"] != d.meta["u"] and not np.array_equal(a.xa, d.xa)


def test_orthogonal_empty_split() -> None:
    data = synth_orthogonal(dim=6, general=2, n_train=30, n_val=0, n_test=11)
    _check_layout(data, 6, 6, (30, 0, 11))


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"dim": 64, "general": 16, "n_train": 100}, "orthogonalize=False"),
        ({"dim": 8, "general": 9}, "general"),
        ({"dim": 0}, "dim"),
        ({"num_classes": 1}, "num_classes"),
        ({"weight_general": 0.0, "weight_specific_a": 0.0, "weight_specific_b": 0.0}, "weight"),
        ({"dim": 8, "general": 8, "weight_general": 0.0}, "weight"),
        ({"dim": 8, "general": 0, "weight_specific_a": 0.0, "weight_specific_b": 0.0}, "weight"),
        ({"weight_general": float("nan")}, "weight_general"),
        ({"orthogonalize": "yes"}, "orthogonalize"),
        ({"n_val": 2.5}, "n_val"),
    ],
)
def test_orthogonal_errors(kwargs: dict, option: str) -> None:
    with pytest.raises(ValueError, match=option) as info:
        synth_orthogonal(**kwargs)
    assert isinstance(info.value, CmkdUsageError)
    assert str(info.value).count("\n") == 0


def test_orthogonal_too_small_split_allowed_when_relaxed() -> None:
    data = synth_orthogonal(dim=64, general=16, orthogonalize=False, n_train=10, n_val=10, n_test=10)
    assert data.xa.shape == (30, 64)
