"""Channel masks from a salience table: modality-general, modality-specific and random teachers.

MFH (Xue et al., ICLR 2023), Sec. 5.4 and App. B.4: with the channels sorted by the salience of their
modality-general decisive information (``cmkdtool rank-salience``), "a modality-general teacher is derived by
nullifying r% feature channels with smallest salience values. Similarly, a modality-specific teacher is obtained by
nullifying the r% feature channels with largest salience values and a random teacher is derived by randomly
nullifying r% channels."

``MaskOptions`` is the single source of the ``--mask/--keep/--ratio/--mask-layer/--fill/--mask-seed`` options of
``pretrain``, ``distill`` (masks the teacher) and ``eval``. The mask is recorded in the model spec (and so in
every checkpoint written afterwards) and applied in every forward pass: a teacher trained with a mask carries it
into ``distill``, ``eval`` and ``spectrum`` with no flag repeated.

The option parsing and channel choice are torch-free; torch is imported only to fit mean fills.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.options import check, opt

KEEPS = ("general", "specific", "random")
FILLS = ("zero", "mean")
SALIENCE_FORMAT = "cmkdtool.salience"

if TYPE_CHECKING:
    import numpy as np


@dataclass
class MaskOptions:
    """Which channels to nullify (recorded in the model spec under ``mask``)."""

    mask: str | None = opt(None, "Salience table (from rank-salience) that ranks the channels to nullify.")
    keep: str = opt(
        "general",
        "general: nullify the least salient channels (a modality-general teacher); specific: the most "
        "salient; random: a seeded random choice.",
        choices=KEEPS,
    )
    ratio: float = opt(0.5, "Fraction r of the channels to nullify, in [0, 1).", ge=0, lt=1)
    mask_layer: str | None = opt(None, "Layer to mask [default: the layer the salience table ranks].")
    fill: str = opt(
        "zero", "Value of nullified channels: zero, or mean (the train-split mean of the channel).", choices=FILLS
    )
    mask_seed: int | None = opt(None, "Seed of --keep random [default: --seed; 0 for eval].", ge=0)

    def validate(self) -> None:
        check(self)


def removed_channels(channels: np.ndarray, rank: np.ndarray, keep: str, ratio: float, seed: int) -> list[int]:
    """The channels to nullify: ``floor(ratio * D + 0.5)`` of the ``D`` ranked ``channels`` (rank 1 = most salient).

    general removes the largest ranks (least salient), specific the smallest (most salient), random a seeded
    choice without replacement (``numpy.random.default_rng(seed)``). Returned sorted.
    """
    import numpy as np

    d = len(channels)
    k = int(math.floor(ratio * d + 0.5))
    if k >= d:
        raise CmkdUsageError(f"--ratio {ratio} would nullify all {d} channels; lower it")
    order = channels[np.lexsort((channels, rank))]  # most salient first; ties by channel index
    if keep == "general":
        out = order[d - k :]
    elif keep == "specific":
        out = order[:k]
    else:
        out = np.random.default_rng(seed).choice(np.sort(channels), size=k, replace=False)  # row order plays no part
    return sorted(int(c) for c in out)


def mask_spec(options: MaskOptions, model, seed: int) -> dict:
    """The spec entry (``model.spec['mask']``) that ``options`` describe for ``model`` (a CmkdModel)."""
    import numpy as np

    from cmkdtool.io.tables import file_sha256

    options.validate()
    from cmkdtool.io.salience import read_salience

    sal = read_salience(options.mask)
    layer = options.mask_layer
    maskable = model.maskable_layers()
    if layer is None:
        mine = [lay for lay in sal.layers() if lay in maskable]
        if len(mine) != 1:
            raise CmkdUsageError(
                f"{options.mask} ranks layers {', '.join(map(repr, sal.layers()))}; choose the layer of this model "
                f"with --mask-layer (layers: {', '.join(maskable)})"
            )
        layer = mine[0]
    if layer not in maskable:
        raise CmkdUsageError(f"cannot mask layer {layer!r}; layers that can be masked: {', '.join(maskable)}")
    rows = sal.rows(layer)
    if len(rows) == 0 and len(sal.layers()) == 1:  # a one-layer table applied to another layer (--mask-layer)
        rows = np.arange(len(sal.channel))
    if len(rows) == 0:
        raise CmkdUsageError(f"{options.mask} ranks no channel of layer {layer!r}; pick one of {sal.layers()}")
    width = model.layer_width(layer)
    channels = sal.channel[rows]
    if sorted(channels.tolist()) != list(range(width)):
        raise CmkdError(
            f"{options.mask} ranks {len(channels)} channels but layer {layer!r} of the model has {width}; "
            "rank the salience of this layer (rank-salience --layer) or pick another --mask-layer"
        )
    mseed = seed if options.mask_seed is None else options.mask_seed
    removed = removed_channels(channels, sal.rank[rows], options.keep, options.ratio, mseed)
    return {
        "layer": layer,
        "dim": width,
        "removed": removed,
        "fill": options.fill,
        "keep": options.keep,
        "ratio": options.ratio,
        "seed": mseed if options.keep == "random" else None,
        "salience": {"path": str(options.mask), "sha256": file_sha256(options.mask)},
    }


def apply_mask(model, options: MaskOptions, seed: int, data=None, what: str = "the model") -> dict | None:
    """Attach the mask ``options`` describe to ``model`` and fit a mean fill on the train rows of ``data``.

    Returns the spec entry, or None when ``options.mask`` is not set. A model that already carries a mask keeps
    it: giving another is an error (its weights were trained, or its salience ranked, with the first).
    """
    if not options.mask:
        return None
    if model.spec.get("mask") is not None:
        old = model.spec["mask"]
        raise CmkdUsageError(
            f"{what} already carries a mask ({old['keep']}, ratio {old['ratio']} on {old['layer']}); "
            "drop --mask, or give a checkpoint without one"
        )
    spec = mask_spec(options, model, seed)
    model.set_mask(spec)
    if data is not None:
        fit_mask_fill(model, data)
    return spec


def fit_mask_fill(model, data, split: str = "train", chunk: int = 8192) -> None:
    """Set a ``'mean'`` mask's fill to the ``split``-rows mean of its layer's (unmasked) output."""
    import torch

    mask = model.channel_mask
    if mask is None or model.spec["mask"]["fill"] != "mean":
        return
    layer = model.spec["mask"]["layer"]
    if layer.startswith("input."):  # the raw train mean: exactly the standardisation mean
        mask.fill.copy_(model.norm[layer[len("input.") :]].mean)
        return
    idx = data.index(split)
    if len(idx) == 0:
        raise CmkdError(f"{data.source}: no {split} rows to compute the mask's mean fill; use --fill zero")
    from cmkdtool.nn.inference import LazyRows, map_rows

    def chunk_sum(rows):
        return model.forward_layers(LazyRows(data.inputs, rows), [layer])[1][layer].double().sum(0)

    total = torch.zeros(mask.fill.shape, dtype=torch.float64, device=mask.fill.device)
    mask.enabled = False
    try:
        for part in map_rows(chunk_sum, idx, model, chunk=chunk):
            total += part
    finally:
        mask.enabled = True
    mask.fill.copy_((total / len(idx)).to(mask.fill.dtype))
