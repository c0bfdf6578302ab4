"""Modality-general decisive feature ranking: MFH (Xue et al., ICLR 2023), App. B.4, Algorithm 1.

Step 1 (``joint_train``) aligns two unimodal networks at the output level, Eq. 28::

    min L = Dist(f1(X^a), f2(X^b)) + CE(Y, f1(X^a)) + CE(Y, f2(X^b))

Steps 2-8 (``permutation_salience``) score channel i of modality a by permutation feature importance against
that alignment: permute column i of X^a across the rows (one row permutation), and average over M repeats the
distance ``Dist(f1(X~^a), f2(X^b))``. Step 9 normalises (``normalize``): the paper's text divides by the maximum
(``'max'``); the authors' code (``gauss/main_modify_gamma.py``) rescales min to 0 and max to 1 (``'minmax'``, the
default here). A larger salience marks a more modality-general decisive channel. Channels may also be the
features of an intermediate layer (App. B.4 note 2): the layer's activations are computed once, and only the
rest of the network runs per permutation. Modality b is ranked the same way against f1 (note 3).

Fast and exact. Permuting channel i changes the next linear layer's output by a rank-one term,
``pre' = pre + (z_i[perm] - z_i) w_i^T``, so that layer is never recomputed; the network after it runs on blocks
of many (channel, repeat) permutations at once, sized to stay in cache. The permutations are the same
``torch.randperm(n, generator)`` draws that the plain loop makes (repeats outer, channels inner, one generator
seeded with ``seed``), so the result equals the plain per-channel loop's within float tolerance.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine.inference import predict
from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.losses.alignment import DISTANCES, POINTWISE
from cmkdtool.nn.inference import LazyRows, map_rows

NORMALIZE = ("minmax", "max", "none")
BLOCK_ELEMENTS = 1 << 20  # floats per block of permuted pre-activations (4 MiB; measured best on 2 cores)


@dataclass
class SalienceResult:
    """Salience of every channel of one layer of one network (rank 1 = most salient)."""

    input: str
    layer: str
    raw: np.ndarray  # mean distance over the repeats (Algorithm 1 before step 9)
    salience: np.ndarray
    rank: np.ndarray


# ---- steps 2-9: permutation salience -------------------------------------------------------------------------


def _stages(net) -> list[tuple[str, object]]:
    """The single-input network as a chain of (layer name, step); the step maps the previous layer's output."""
    (col,) = net.input_names
    stages: list[tuple[str, object]] = [(f"input.{col}", None)]
    stages += [(f"encoders.{col}.{i}", m) for i, m in enumerate(net.encoders[col])]
    mask = net.spec.get("mask")
    stages.append(
        ("embedding", (lambda x: net._masked("embedding", x)) if mask and mask["layer"] == "embedding" else None)
    )
    stages += [(f"head.{i}", m) for i, m in enumerate(net.head)]
    return stages


def _layer_output(net, data: TensorData, rows: Tensor, layer: str) -> Tensor:
    """The output of ``layer`` of ``net`` on ``rows``, float32, chunked, in eval mode."""

    def run(idx: Tensor) -> Tensor:
        return net.forward_layers(LazyRows(data.inputs, idx), [layer])[1][layer].float()

    return torch.cat(map_rows(run, rows))


def _in_place(step):
    """An activation module as its in-place function (the chain runs on temporaries it owns); else the step.
    A module with a forward hook (a channel mask) keeps its module call."""
    if isinstance(step, nn.Module) and step._forward_hooks:
        return step
    if isinstance(step, nn.ReLU):
        return torch.relu_
    if isinstance(step, nn.LeakyReLU):
        slope = step.negative_slope
        return lambda x: nn.functional.leaky_relu_(x, slope)
    if isinstance(step, nn.Identity | nn.Dropout):  # eval mode
        return None
    return step


def _run_chain(steps: list, x: Tensor) -> Tensor:
    for s in steps:
        x = s(x)
    return x


def permutation_salience(
    net,
    target: Tensor,
    z: Tensor,
    rest: list,
    *,
    repeats: int = 100,
    seed: int = 0,
    distance: str = "mse",
    block_elements: int = BLOCK_ELEMENTS,
    quiet: bool = True,
    desc: str = "salience",
) -> np.ndarray:
    """Mean distance (Algorithm 1 steps 2-8, before normalisation) for every channel of ``z``.

    Args:
        net: the permuted network (a CmkdModel); ``rest`` are its steps after the ranked layer.
        target: (n, C) the other network's outputs on the unpermuted rows (``f2(X^b)``).
        z: (n, D) the permuted network's activations at the ranked layer, on the same rows.
        rest: the steps (modules or callables) that map ``z`` to the logits.
        repeats: M, permutations per channel.
        seed: seed of the CPU ``torch.Generator`` that draws ``torch.randperm(n)`` for repeat m, channel i in the
            order m = 0..M-1 (outer), i = 0..D-1 (inner).
        distance: 'mse' or 'l1' (mean over rows and classes).
        block_elements: floats per block of permuted activations.

    Returns:
        (D,) float64 array: ``p_i = 1/M sum_m Dist(rest(z with column i permuted by perm_{m,i}), target)``.
    """
    if distance not in POINTWISE:
        raise CmkdUsageError(f"unknown distance '{distance}'; choose one of {', '.join(DISTANCES)}")
    n, d = z.shape
    if n < 2:
        raise CmkdError("permutation salience needs at least 2 rows")
    point = POINTWISE[distance]
    dev = z.device
    first = rest[0] if rest else None
    rank_one = isinstance(first, nn.Linear)
    with torch.no_grad():
        if rank_one:
            base = first(z)  # (n, h): runs the layer's mask hook, if any
            w = first.weight.float()
            hook_mask = _output_mask(net, first)
            if hook_mask is not None:  # a masked output channel stays at its fill whatever the input
                w = w * hook_mask.keep.to(w.dtype)[:, None]
            cols = w.t().contiguous()  # (D, h): column i of the weight is row i here
            tail = rest[1:]
        else:
            base, tail = z, rest
        tail = [f for f in map(_in_place, tail) if f is not None]
        width = base.shape[1]
        rows_per = max(1, min(n, block_elements // max(1, width)))
        per_block = max(1, block_elements // (rows_per * width))
        zt = z.t().contiguous()  # (D, n)
        gen = torch.Generator().manual_seed(int(seed))
        total = repeats * d
        acc = torch.zeros(total, dtype=torch.float64, device=dev)
        from tqdm.auto import tqdm

        bar = tqdm(
            total=total,
            desc=desc,
            unit="perm",
            file=sys.stderr,
            disable=quiet or not sys.stderr.isatty(),
            leave=False,
            dynamic_ncols=True,
        )
        for start in range(0, total, per_block):
            pairs = torch.arange(start, min(total, start + per_block))
            chans = (pairs % d).to(dev)
            perms = torch.stack([torch.randperm(n, generator=gen) for _ in range(len(pairs))]).to(dev)
            zc = zt[chans]  # (B, n)
            moved = zc.gather(1, perms)  # column i after the permutation
            block_sum = torch.zeros(len(pairs), dtype=torch.float64, device=dev)
            for r0 in range(0, n, rows_per):
                r1 = min(n, r0 + rows_per)
                if rank_one:
                    delta = (moved[:, r0:r1] - zc[:, r0:r1]).unsqueeze(2)  # (B, r, 1)
                    pre = torch.addcmul(base[r0:r1].unsqueeze(0), delta, cols[chans].unsqueeze(1))  # (B, r, h)
                else:
                    pre = base[r0:r1].unsqueeze(0).repeat(len(pairs), 1, 1)
                    pre[torch.arange(len(pairs), device=dev)[:, None], torch.arange(r1 - r0, device=dev)[None, :],
                        chans[:, None]] = moved[:, r0:r1]  # fmt: skip
                out = _run_chain(tail, pre.view(-1, width)).float().view(len(pairs), r1 - r0, -1)
                block_sum += point(out - target[r0:r1].unsqueeze(0)).sum((1, 2)).double()
            acc[start : start + len(pairs)] = block_sum
            bar.update(len(pairs))
        bar.close()
    per_pair = acc.cpu().numpy() / (n * target.shape[1])
    return per_pair.reshape(repeats, d).mean(0)


def _output_mask(net, module: nn.Module):
    """The model's ChannelMask if it masks ``module``'s output (applied by a forward hook), else None."""
    mask = net.spec.get("mask")
    if not mask or not mask["layer"].startswith(("encoders.", "head.")):
        return None
    return net.channel_mask if dict(net.named_modules()).get(mask["layer"]) is module else None


def normalize(raw: np.ndarray, how: str = "minmax") -> np.ndarray:
    """Algorithm 1 step 9: ``'max'`` p / max p (the paper's text), ``'minmax'`` (p - min) / (max - min) (the
    authors' code), ``'none'`` p unchanged. A constant vector normalises to zeros."""
    if how not in NORMALIZE:
        raise CmkdUsageError(f"unknown --normalize '{how}'; choose one of {', '.join(NORMALIZE)}")
    if how == "none":
        return raw.copy()
    lo = raw.min() if how == "minmax" else 0.0
    span = raw.max() - lo
    return (raw - lo) / span if span > 0 else np.zeros_like(raw)


def ranks(values: np.ndarray) -> np.ndarray:
    """1 = largest; ties broken by the smaller channel index."""
    order = np.lexsort((np.arange(len(values)), -values))
    out = np.empty(len(values), dtype=np.int64)
    out[order] = np.arange(1, len(values) + 1)
    return out


def layer_of(net, layer: str | None) -> str:
    """The ranked layer of a single-input network: ``input.<col>`` by default."""
    if len(net.input_names) != 1:
        raise CmkdUsageError(
            f"rank-salience permutes the channels of a single-input network; this one reads {net.input_names}"
        )
    name = layer or f"input.{net.input_names[0]}"
    stages = _stages(net)
    names = [s for s, _ in stages]
    if name not in names:
        raise CmkdUsageError(f"unknown layer {name!r}; layers that can be ranked: {', '.join(names)}")
    if not [step for _, step in stages[names.index(name) + 1 :] if step is not None]:
        raise CmkdUsageError(f"layer {name!r} is the output; rank an earlier layer")
    return name


def rank_network(net_p, net_q, data: TensorData, rows: Tensor, *, layer: str | None = None, repeats: int = 100,
                 seed: int = 0, distance: str = "mse", how: str = "minmax", quiet: bool = True,
                 block_elements: int = BLOCK_ELEMENTS) -> SalienceResult:  # fmt: skip
    """Salience of the channels of ``layer`` of ``net_p`` against the unpermuted outputs of ``net_q``."""
    if repeats < 1:
        raise CmkdUsageError("--repeats must be at least 1")
    name = layer_of(net_p, layer)
    net_p.eval()
    net_q.eval()
    stages = _stages(net_p)
    k = [s for s, _ in stages].index(name)
    rest = [step for _, step in stages[k + 1 :] if step is not None]
    z = _layer_output(net_p, data, rows, name)
    target, _ = predict(net_q, data, rows)
    raw = permutation_salience(
        net_p, target, z, rest, repeats=repeats, seed=seed, distance=distance, quiet=quiet,
        desc=f"salience {name}", block_elements=block_elements,
    )  # fmt: skip
    sal = normalize(raw, how)
    return SalienceResult(net_p.input_names[0], name, raw, sal, ranks(raw))


def recovered(result: SalienceResult, truth: list[int]) -> float:
    """Fraction of the ``truth`` channels among the ``len(truth)`` most salient (the MFH code's "tag acc")."""
    if not truth:
        return float("nan")
    top = set(np.nonzero(result.rank <= len(truth))[0].tolist())
    return len(top & set(truth)) / len(truth)


__all__ = [
    "NORMALIZE",
    "SalienceResult",
    "layer_of",
    "normalize",
    "permutation_salience",
    "rank_network",
    "ranks",
    "recovered",
]
