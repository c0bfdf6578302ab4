"""Feature tables -> device-resident tensors for training and evaluation.

The whole table moves to the device once; batches are index slices there (no DataLoader, no per-step copies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cmkdtool.errors import CmkdError
from cmkdtool.io.tables import FeatureTable


@dataclass
class TensorData:
    """Inputs, targets and split membership of one (joined) feature table, on one device."""

    ids: np.ndarray
    inputs: dict[str, Tensor]
    shapes: dict[str, tuple[int, ...]]
    target: Tensor | None
    labels: np.ndarray | None
    split: np.ndarray
    task: str | None
    num_classes: int | None
    class_names: list[str] | None
    source: str

    def index(self, split: str) -> Tensor:
        idx = np.nonzero(self.split == split)[0]
        return torch.as_tensor(idx, dtype=torch.long, device=self.device)

    def count(self, split: str) -> int:
        return int((self.split == split).sum())

    @property
    def device(self) -> torch.device:
        return next(iter(self.inputs.values())).device

    def __len__(self) -> int:
        return len(self.ids)


def multi_hot(labels: np.ndarray, num_classes: int) -> np.ndarray:
    out = np.zeros((len(labels), num_classes), dtype=np.float32)
    rows = np.repeat(np.arange(len(labels)), [len(v) for v in labels])
    cols = np.concatenate([np.asarray(v, dtype=np.int64) for v in labels]) if len(labels) else np.zeros(0, int)
    out[rows, cols] = 1.0
    return out


def _label_range(labels: np.ndarray, task: str) -> tuple[int, int]:
    if task == "multiclass":
        return (int(labels.min()), int(labels.max())) if len(labels) else (0, -1)
    flat = np.concatenate([np.asarray(v) for v in labels]) if len(labels) else np.zeros(0, int)
    return (int(flat.min()), int(flat.max())) if len(flat) else (0, -1)


def load_tensor_data(
    table: FeatureTable,
    inputs: Sequence[str],
    device: torch.device | str = "cpu",
    *,
    need_labels: bool = True,
    num_classes: int | None = None,
    split_ratio: Sequence[float] = (0.8, 0.1, 0.1),
    split_seed: int = 0,
    require_train_classes: bool = False,
) -> TensorData:
    """Validate and load ``inputs`` (and labels) of ``table`` onto ``device``.

    ``num_classes`` fixes the class count (a checkpoint's); labels outside it are an error. Otherwise it comes
    from the table's class names or the largest label. ``require_train_classes`` makes a class with no train
    row an error (a model cannot learn it).
    """
    name = table.name
    for c in inputs:
        table.require(c, "feature column")
    shapes = {c: table.shape(c) for c in inputs}
    arrays = {c: table.array(c) for c in inputs}
    split = table.split_array(split_ratio, split_seed)
    task = labels = target = None
    names = table.class_names()
    if need_labels or table.has_labels():
        task = table.task()
        labels = table.label_array()
        lo, hi = _label_range(labels, task)
        if lo < 0:
            raise CmkdError(f"{name}: negative label {lo}; labels are class indices 0..C-1")
        if num_classes is None:
            num_classes = len(names) if names else hi + 1
            if hi >= num_classes:
                raise CmkdError(
                    f"{name}: label {hi} but the table's metadata names only {num_classes} classes; "
                    "fix the labels or the class_names metadata"
                )
        elif hi >= num_classes:
            raise CmkdError(
                f"{name}: label {hi} is outside the checkpoint's {num_classes} classes (0..{num_classes - 1}); "
                "evaluate with a table of the same classes"
            )
        if require_train_classes:
            train = labels[split == "train"]
            if len(train) == 0:
                raise CmkdError(f"{name}: the train split is empty; add a 'split' column or check --split-ratio")
            seen = np.zeros(num_classes, bool)
            if task == "multiclass":
                seen[train] = True
            else:
                seen[np.concatenate([np.asarray(v, dtype=np.int64) for v in train])] = True
            missing = np.nonzero(~seen)[0]
            if task == "multiclass" and len(missing):
                c = int(missing[0])
                label = f"{c} ('{names[c]}')" if names and c < len(names) else str(c)
                raise CmkdError(
                    f"{name}: class {label} has no row in the train split ({len(missing)} classes missing); "
                    "add training examples of it or remove the class (labels must be contiguous 0..C-1)"
                )
        if task == "multiclass":
            target = torch.as_tensor(labels, dtype=torch.long)
        else:
            target = torch.as_tensor(multi_hot(labels, num_classes))
    dev = torch.device(device)
    return TensorData(
        ids=table.ids(),
        inputs={c: _to_tensor(a, dev) for c, a in arrays.items()},
        shapes=shapes,
        target=None if target is None else target.to(dev),
        labels=labels,
        split=split,
        task=task,
        num_classes=num_classes,
        class_names=names,
        source=name,
    )


def _to_tensor(a: np.ndarray, device: torch.device) -> Tensor:
    """Share the (read-only, zero-copy) Arrow buffer on the CPU; inputs are never written in place."""
    import warnings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(a).to(device)


def check_model_inputs(table: FeatureTable, spec: dict, checkpoint: str) -> None:
    """Every input column a checkpoint's model reads exists in ``table`` with the shape it was trained on."""
    for i in spec["inputs"]:
        table.require(i["name"], "feature column")
        shape = table.shape(i["name"])
        if list(shape) != list(i["shape"]):
            raise CmkdError(
                f"{table.name}: column '{i['name']}' has shape {list(shape)} but {checkpoint} expects "
                f"{list(i['shape'])}; use the table the model was trained on or re-extract features"
            )
