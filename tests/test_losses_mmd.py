"""Multi-kernel MMD and DASK: hand-derived values, an independent reference, properties, gradients, parity."""

from __future__ import annotations

import ast
import json
import math
import os
from pathlib import Path

import pytest
import torch

from cmkdtool.losses import relational
from cmkdtool.losses.mmd import dask, mmd_multi_kernel

E = math.exp


def _rand(*shape: int, seed: int, dtype: torch.dtype = torch.float64, scale: float = 1.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)


def _det(shape: tuple[int, ...], k: float, s: float = 0.37) -> torch.Tensor:
    """The spec's deterministic inputs (amid-osmd.md, section 3.9): sin(s * arange(prod(shape)) + k)."""
    return torch.sin(s * torch.arange(math.prod(shape), dtype=torch.float64) + k).reshape(shape)


def _col(*values: float) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64).unsqueeze(1)


# ---------------------------------------------------------------- independent reference (plain Python loops)


def _ref_kernel_matrix(points: list[list[float]], mul: float, num: int, fix_sigma: float | None) -> list[list[float]]:
    """Sum over the kernels of exp(-|z_i - z_j|^2 / bw_q), with the data-dependent bandwidth when fix_sigma is None."""
    size = len(points)
    d2 = [[sum((a - b) ** 2 for a, b in zip(p, r, strict=True)) for r in points] for p in points]
    centre = fix_sigma if fix_sigma is not None else sum(map(sum, d2)) / (size * size - size)
    widths = [centre / mul ** (num // 2) * mul**q for q in range(num)]
    return [[sum(math.exp(-d2[i][j] / w) for w in widths) for j in range(size)] for i in range(size)]


def _ref_mmd(x: torch.Tensor, y: torch.Tensor, mul: float = 2.0, num: int = 5, fix_sigma: float | None = None) -> float:
    """V-statistic: 1/n^2 sum k(x, x') + 1/m^2 sum k(y, y') - 1/(nm) sum k(x, y) - 1/(nm) sum k(y, x)."""
    xs, ys = x.reshape(len(x), -1).tolist(), y.reshape(len(y), -1).tolist()
    n, m = len(xs), len(ys)
    k = _ref_kernel_matrix(xs + ys, mul, num, fix_sigma)
    kxx = sum(k[i][j] for i in range(n) for j in range(n)) / n**2
    kyy = sum(k[n + i][n + j] for i in range(m) for j in range(m)) / m**2
    kxy = sum(k[i][n + j] for i in range(n) for j in range(m)) / (n * m)
    kyx = sum(k[n + j][i] for i in range(n) for j in range(m)) / (n * m)
    return kxx + kyy - kxy - kyx


# ---------------------------------------------------------------- hand-derived values

# 1-d points, source x = (0, 1), target y = (1, 2). Squared distances:
#   within x: |0-1|^2 = 1;  within y: |1-2|^2 = 1;
#   across:   (0,1) -> 1, (0,2) -> 4, (1,1) -> 0, (1,2) -> 1.
# For one Gaussian k(d2) = exp(-d2 / w):
#   mean K_XX = (1 + 1 + 2 k(1)) / 4 = (1 + k(1)) / 2,  mean K_YY = the same,
#   mean K_XY = mean K_YX = (k(1) + k(4) + k(0) + k(1)) / 4 = (1 + 2 k(1) + k(4)) / 4,
#   MMD = (1 + k(1)) - (1 + 2 k(1) + k(4)) / 2 = (1 - k(4)) / 2 = (1 - exp(-4 / w)) / 2.
# Summing kernels sums these: MMD = sum_q (1 - exp(-4 / w_q)) / 2.
# Data-dependent bandwidth: Z = (0, 1, 1, 2); unordered pair distances 1, 1, 4, 0, 1, 1 sum to 8, ordered 16;
#   (n+m)^2 - (n+m) = 12, so bw = 16 / 12 = 4/3.
HAND_X, HAND_Y = _col(0.0, 1.0), _col(1.0, 2.0)


@pytest.mark.parametrize("sigma", [1.0, 2.0, 0.5])
def test_single_kernel_fixed_sigma_hand_value(sigma):
    # kernel_num = 1: num // 2 = 0, so the one bandwidth is fix_sigma itself (the paper's Eq. 3).
    got = mmd_multi_kernel(HAND_X, HAND_Y, kernel_num=1, fix_sigma=sigma)
    assert got.item() == pytest.approx((1 - E(-4 / sigma)) / 2, rel=1e-14)


def test_multi_kernel_fixed_sigma_is_the_centre_hand_value():
    # mul 2, 3 kernels, fix_sigma 2: 2 / 2^(3 // 2) = 1, widths 1, 2, 4 -> (3 - e^-4 - e^-2 - e^-1) / 2
    expected = (3 - E(-4) - E(-2) - E(-1)) / 2
    got = mmd_multi_kernel(HAND_X, HAND_Y, kernel_mul=2.0, kernel_num=3, fix_sigma=2.0)
    assert got.item() == pytest.approx(expected, rel=1e-14)
    # The reference's comment: fix_sigma 1 with the defaults gives widths 0.25, 0.5, 1, 2, 4.
    widths = [0.25, 0.5, 1.0, 2.0, 4.0]
    got = mmd_multi_kernel(HAND_X, HAND_Y, fix_sigma=1.0)
    assert got.item() == pytest.approx(sum((1 - E(-4 / w)) / 2 for w in widths), rel=1e-14)


def test_data_dependent_bandwidth_hand_value():
    # bw = 4/3; one kernel: (1 - e^(-4 / (4/3))) / 2 = (1 - e^-3) / 2
    assert mmd_multi_kernel(HAND_X, HAND_Y, kernel_num=1).item() == pytest.approx((1 - E(-3)) / 2, rel=1e-14)
    # defaults (mul 2, 5 kernels): widths bw/4 .. 4bw = 1/3, 2/3, 4/3, 8/3, 16/3 -> 4 / w = 12, 6, 3, 1.5, 0.75
    expected = (5 - E(-12) - E(-6) - E(-3) - E(-1.5) - E(-0.75)) / 2
    assert mmd_multi_kernel(HAND_X, HAND_Y).item() == pytest.approx(expected, rel=1e-14)
    # ... which is the fixed-sigma form at sigma = bw.
    assert mmd_multi_kernel(HAND_X, HAND_Y, fix_sigma=4 / 3).item() == pytest.approx(expected, rel=1e-14)


def test_spec_vector_computed_with_the_reference():
    # amid-osmd.md section 3.9: TMM-MMH MMD_loss() on det((6,5),0), det((6,5),1) + 0.5
    got = mmd_multi_kernel(_det((6, 5), 0), _det((6, 5), 1) + 0.5)
    assert got.item() == pytest.approx(0.47825861077587156, rel=1e-12)


# ---------------------------------------------------------------- independent reference


@pytest.mark.parametrize(
    ("mul", "num", "fix_sigma"),
    [(2.0, 5, None), (2.0, 1, None), (3.0, 4, None), (1.5, 2, None), (2.0, 5, 3.0), (1.0, 3, 0.7)],
)
def test_matches_independent_loop_reference(mul, num, fix_sigma):
    x, y = _rand(7, 4, seed=1), _rand(7, 4, seed=2, scale=1.5) + 0.3
    got = mmd_multi_kernel(x, y, kernel_mul=mul, kernel_num=num, fix_sigma=fix_sigma)
    assert got.item() == pytest.approx(_ref_mmd(x, y, mul, num, fix_sigma), rel=1e-12)


@pytest.mark.parametrize(("n", "m"), [(3, 5), (5, 2), (1, 4), (4, 1), (1, 1)])
def test_unequal_batch_sizes_give_the_v_statistic(n, m):
    x, y = _rand(n, 3, seed=3), _rand(m, 3, seed=4) + 0.5
    assert mmd_multi_kernel(x, y).item() == pytest.approx(_ref_mmd(x, y), rel=1e-12)


@pytest.mark.parametrize(("n", "m"), [(1, 4), (4, 1), (3, 3)])
def test_where_the_reference_runs_it_agrees_with_its_elementwise_block_sum(n, m):
    # The reference adds the four blocks elementwise: for n == m, or a single row on one side, that broadcasts;
    # mean(XX + YY - XY - YX) of the broadcast is then the sum of the block means.
    x, y = _rand(n, 3, seed=5), _rand(m, 3, seed=6) - 0.4
    k = torch.tensor(_ref_kernel_matrix(x.tolist() + y.tolist(), 2.0, 5, None), dtype=torch.float64)
    reference = torch.mean(k[:n, :n] + k[n:, n:] - k[:n, n:] - k[n:, :n]).item()
    assert mmd_multi_kernel(x, y).item() == pytest.approx(reference, rel=1e-12)


def test_extra_dimensions_are_flattened():
    x, y = _rand(4, 2, 3, 3, seed=7), _rand(4, 2, 3, 3, seed=8)
    flat = mmd_multi_kernel(x.flatten(1), y.flatten(1)).item()
    assert mmd_multi_kernel(x, y).item() == pytest.approx(flat, rel=1e-14)
    assert flat == pytest.approx(_ref_mmd(x, y), rel=1e-12)


# ---------------------------------------------------------------- properties


@pytest.mark.parametrize("fix_sigma", [None, 2.0])
def test_zero_for_a_set_against_itself_and_permutations_of_it(fix_sigma):
    x = _rand(6, 5, seed=9)
    assert mmd_multi_kernel(x, x.clone(), fix_sigma=fix_sigma).item() == pytest.approx(0.0, abs=1e-14)
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    assert mmd_multi_kernel(x, x[perm], fix_sigma=fix_sigma).item() == pytest.approx(0.0, abs=1e-14)


@pytest.mark.parametrize("fix_sigma", [None, 4.0])
def test_grows_with_a_shift(fix_sigma):
    x = _rand(8, 3, seed=10)
    direction = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    values = [mmd_multi_kernel(x, x + c * direction, fix_sigma=fix_sigma).item() for c in (0.0, 0.1, 0.3, 1, 3, 10)]
    assert values[0] == pytest.approx(0.0, abs=1e-14)
    assert all(b > a for a, b in zip(values, values[1:], strict=False)), values
    assert values[-1] <= 2 * 5


def test_symmetric_and_bounded():
    x, y = _rand(5, 4, seed=11), _rand(5, 4, seed=12, scale=3.0)
    assert mmd_multi_kernel(x, y).item() == pytest.approx(mmd_multi_kernel(y, x).item(), rel=1e-13)
    assert 0 <= mmd_multi_kernel(x, y).item() <= 2 * 5
    # The bound 2 * kernel_num is reached by two far-apart clusters of one point each: K_XX = K_YY = num, K_XY = 0.
    zeros = torch.zeros(3, 4, dtype=torch.float64)
    assert mmd_multi_kernel(zeros, zeros + 1e3, kernel_num=3, fix_sigma=1.0).item() == 2 * 3


def test_all_points_equal_gives_zero_not_nan():
    # bw = 0: the reference computes exp(-0 / 0) = NaN; every distance is 0, so the value is exactly 0.
    z = torch.full((3, 4), 0.25, dtype=torch.float64, requires_grad=True)
    w = torch.full((3, 4), 0.25, dtype=torch.float64, requires_grad=True)
    out = mmd_multi_kernel(z, w)
    assert out.item() == 0.0
    out.backward()
    assert torch.equal(z.grad, torch.zeros_like(z)) and torch.equal(w.grad, torch.zeros_like(w))


# ---------------------------------------------------------------- gradients


@pytest.mark.parametrize(("num", "fix_sigma"), [(5, 2.0), (1, 0.8), (4, 5.0)])
def test_gradcheck_fixed_sigma(num, fix_sigma):
    x = _rand(4, 3, seed=13).requires_grad_(True)
    y = _rand(3, 3, seed=14).requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda a, b: mmd_multi_kernel(a, b, kernel_num=num, fix_sigma=fix_sigma), (x, y), eps=1e-6, atol=1e-7
    )


def _grads(fn, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = x.clone().requires_grad_(True), y.clone().requires_grad_(True)
    return torch.autograd.grad(fn(x, y), (x, y))


def test_data_dependent_bandwidth_is_detached():
    # The reference computes bw from L2_distance.data: the gradient holds bw constant. So the gradient is the
    # fixed-sigma gradient at sigma = bw (itself gradchecked above) ...
    x, y = _rand(5, 3, seed=15), _rand(5, 3, seed=16) + 0.7
    total = torch.cat([x, y])
    bw = ((total[:, None] - total[None]) ** 2).sum(-1).sum().item() / (10 * 10 - 10)
    auto = _grads(mmd_multi_kernel, x, y)
    fixed = _grads(lambda a, b: mmd_multi_kernel(a, b, fix_sigma=bw), x, y)
    for g, h in zip(auto, fixed, strict=True):
        torch.testing.assert_close(g, h, rtol=1e-12, atol=1e-14)

    # ... and not the full derivative, which also moves bw (the detach is what the test above pins).
    def through_bw(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        z = torch.cat([a, b])
        d2 = ((z[:, None] - z[None]) ** 2).sum(-1)
        centre = d2.sum() / (10 * 10 - 10) / 4
        k = sum(torch.exp(-d2 / (centre * 2**q)) for q in range(5))
        return k[:5, :5].mean() + k[5:, 5:].mean() - k[:5, 5:].mean() - k[5:, :5].mean()

    assert through_bw(x, y).item() == pytest.approx(mmd_multi_kernel(x, y).item(), rel=1e-12)
    full = _grads(through_bw, x, y)
    assert (full[0] - auto[0]).abs().max() > 1e-3


@pytest.mark.parametrize("fix_sigma", [None, 1.5])
def test_gradient_reaches_both_sides(fix_sigma):
    x = _rand(4, 3, seed=17, dtype=torch.float32).requires_grad_(True)
    y = _rand(4, 3, seed=18, dtype=torch.float32).requires_grad_(True)
    out = mmd_multi_kernel(x, y, fix_sigma=fix_sigma)
    assert out.ndim == 0
    out.backward()
    for t in (x, y):
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


# ---------------------------------------------------------------- precision


def test_bf16_inputs_give_float32_result():
    x, y = _rand(4, 6, seed=19, dtype=torch.bfloat16), _rand(4, 6, seed=20, dtype=torch.bfloat16)
    out = mmd_multi_kernel(x, y)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, mmd_multi_kernel(x.float(), y.float()), rtol=0, atol=0)


def test_float64_stays_float64_and_mixed_inputs_promote():
    x, y = _rand(3, 2, seed=21), _rand(3, 2, seed=22)
    assert mmd_multi_kernel(x, y).dtype == torch.float64
    assert mmd_multi_kernel(x.float(), y).dtype == torch.float64
    assert mmd_multi_kernel(x.float(), y.float()).dtype == torch.float32


def test_under_bf16_autocast_result_is_float32_and_gradient_flows():
    torch.manual_seed(0)
    layer = torch.nn.Linear(5, 4)
    x, t = torch.randn(6, 5), torch.randn(6, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        s = layer(x)
        assert s.dtype == torch.bfloat16
        out = mmd_multi_kernel(s, t)
    assert out.dtype == torch.float32
    out.backward()
    assert layer.weight.grad is not None and torch.isfinite(layer.weight.grad).all()
    assert layer.weight.grad.abs().sum() > 0


# ---------------------------------------------------------------- errors


def test_feature_shape_mismatch_names_both_shapes_and_the_fix():
    with pytest.raises(ValueError, match=r"source features \(8, 16\) and target features \(8, 32\).*projector"):
        mmd_multi_kernel(torch.zeros(8, 16), torch.zeros(8, 32))


def test_inputs_need_a_feature_dimension_and_rows():
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        mmd_multi_kernel(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="empty batch"):
        mmd_multi_kernel(torch.zeros(0, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="empty batch"):
        mmd_multi_kernel(torch.zeros(2, 3), torch.zeros(0, 3))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"kernel_num": 0}, "kernel_num"),
        ({"kernel_num": 2.0}, "kernel_num"),
        ({"kernel_num": True}, "kernel_num"),
        ({"kernel_mul": 0.0}, "kernel_mul"),
        ({"kernel_mul": -2.0}, "kernel_mul"),
        ({"kernel_mul": float("inf")}, "kernel_mul"),
        ({"kernel_mul": float("nan")}, "kernel_mul"),
        ({"fix_sigma": 0.0}, "fix_sigma"),
        ({"fix_sigma": -1.0}, "fix_sigma"),
        ({"fix_sigma": float("nan")}, "fix_sigma"),
    ],
)
def test_bad_hyperparameters_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        mmd_multi_kernel(torch.zeros(2, 3), torch.ones(2, 3), **kwargs)


# ---------------------------------------------------------------- DASK (RKD from cmkdtool.losses.relational)


def test_dask_spec_vector_computed_with_the_reference():
    # amid-osmd.md section 3.9: TMM-MMH DASK() (RKD 25/50 + MSE) on det((6,5),0), det((6,5),1)
    got = dask(_det((6, 5), 0), _det((6, 5), 1))
    assert got.item() == pytest.approx(4.6469025800122, rel=1e-12)


def test_dask_is_weighted_rkd_plus_element_mean_mse():
    s, t = _rand(6, 2, 3, seed=23), _rand(6, 2, 3, seed=24)
    flat_s, flat_t = s.flatten(1), t.flatten(1)
    mse = sum((a - b) ** 2 for a, b in zip(flat_s.flatten().tolist(), flat_t.flatten().tolist(), strict=True)) / 36
    rkd = relational.rkd(flat_s, flat_t).item()
    assert dask(s, t).item() == pytest.approx(rkd + mse, rel=1e-12)
    assert dask(s, t, w_mse=3.0, w_rkd=0.5).item() == pytest.approx(0.5 * rkd + 3.0 * mse, rel=1e-12)
    assert dask(s, t, w_rkd=0.0).item() == pytest.approx(mse, rel=1e-12)


def test_dask_gradcheck_and_precision():
    s = _rand(5, 4, seed=25).requires_grad_(True)
    t = _rand(5, 4, seed=26)
    assert torch.autograd.gradcheck(lambda a: dask(a, t), (s,), eps=1e-6, atol=1e-6)
    bf = dask(s.detach().bfloat16(), t.bfloat16())
    assert bf.dtype == torch.float32


def test_dask_checks_shapes_before_needing_rkd():
    with pytest.raises(ValueError, match=r"student features \(4, 8\) and teacher features \(4, 6\).*projector"):
        dask(torch.zeros(4, 8), torch.zeros(4, 6))
    with pytest.raises(ValueError, match="at least 2 dimensions"):
        dask(torch.zeros(4), torch.zeros(4))
    with pytest.raises(ValueError, match="empty batch"):
        dask(torch.zeros(0, 3), torch.zeros(0, 3))


# ---------------------------------------------------------------- parity with the reference implementation

PARITY_DIR = Path(os.environ.get("CMKDTOOL_PARITY_DIR") or Path(__file__).resolve().parents[2] / "shared" / "parity")
TMM_MMH = "shicaiwei123/TMM-MMH"
# The reference classes' constructor parameters, in order, with their defaults (TMM-MMH code).
REFERENCE_SIGNATURES = {"MMD_loss": (("kernel_mul", 2.0), ("kernel_num", 5)), "DASK": ()}
PARITY_REL = 1e-9


def _parity_params() -> list:
    manifest = PARITY_DIR / "manifest.json"
    if not manifest.is_file():
        reason = f"no parity fixtures: {manifest} is missing (set CMKDTOOL_PARITY_DIR to a folder with manifest.json)"
        return [pytest.param(None, None, id="no-fixtures", marks=pytest.mark.skip(reason=reason))]
    entries = json.loads(manifest.read_text())
    chosen = [
        pytest.param(name, entry, id=name)
        for name, entry in entries.items()
        if name == "mmd" or str(entry.get("reference", "")).split("@")[0] == TMM_MMH
    ]
    if not chosen:
        reason = f"{manifest} lists no 'mmd' case and no case whose reference is {TMM_MMH}"
        return [pytest.param(None, None, id="no-cases", marks=pytest.mark.skip(reason=reason))]
    return chosen


def _parse_call(call: str) -> tuple[str, dict, list[str]]:
    """'Cls(a=1, b=2)(x, y)' -> ('Cls', {constructor arguments with the reference's defaults}, ['x', 'y'])."""
    node = ast.parse(call, mode="eval").body
    if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Call)):
        pytest.fail(f"cannot read the call {call!r}: expected 'Class(options)(inputs...)'")
    cls = ast.unparse(node.func.func)
    if cls not in REFERENCE_SIGNATURES:
        pytest.fail(f"no cmkdtool function is mapped to the reference class {cls!r} (call {call!r})")
    signature = REFERENCE_SIGNATURES[cls]
    options = dict(signature)
    if len(node.func.args) > len(signature):
        pytest.fail(f"{call!r}: {cls} takes at most {len(signature)} positional options")
    for (name, _), arg in zip(signature, node.func.args, strict=False):
        options[name] = ast.literal_eval(arg)
    for kw in node.func.keywords:
        if kw.arg not in options:
            pytest.fail(f"{call!r}: unknown {cls} option {kw.arg!r}")
        options[kw.arg] = ast.literal_eval(kw.value)
    return cls, options, [ast.unparse(a) for a in node.args]


def _rel_err(got: float, expected: float) -> float:
    return abs(got - expected) / abs(expected) if expected != 0 else abs(got)


@pytest.mark.parametrize(("name", "entry"), _parity_params())
def test_parity_with_reference(name, entry):
    from safetensors.torch import load_file

    cls, options, arg_names = _parse_call(entry["call"])
    tensors = {k: v.to(torch.float64) for k, v in load_file(str(PARITY_DIR / entry["inputs"])).items()}
    missing = [a for a in arg_names if a not in tensors]
    assert not missing, f"{name}: {entry['inputs']} lacks the inputs {missing} named in {entry['call']!r}"
    inputs = [tensors[a].clone().requires_grad_(True) for a in arg_names]

    if cls == "MMD_loss":
        kernel_num = options["kernel_num"]
        if isinstance(kernel_num, float) and kernel_num.is_integer():
            kernel_num = int(kernel_num)
        out = mmd_multi_kernel(*inputs, kernel_mul=float(options["kernel_mul"]), kernel_num=kernel_num)
    else:  # DASK
        out = dask(*inputs)
    assert out.dtype == torch.float64

    expected = entry["expected"]
    unknown = set(expected) - {"loss"}
    assert not unknown, f"{name}: expected values {sorted(unknown)} have no counterpart in this test"
    assert _rel_err(out.item(), expected["loss"]) <= PARITY_REL, (name, out.item(), expected["loss"])

    # Gradients stored next to the inputs as grad_<input> (the reference's d loss / d input), if any.
    stored = {a: tensors[f"grad_{a}"] for a in arg_names if f"grad_{a}" in tensors}
    if stored:
        grads = dict(zip(arg_names, torch.autograd.grad(out, inputs), strict=True))
        for a, ref in stored.items():
            torch.testing.assert_close(grads[a], ref, rtol=PARITY_REL, atol=1e-12 * ref.abs().max().item())
