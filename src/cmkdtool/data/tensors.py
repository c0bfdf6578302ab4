"""Feature tables -> device-resident tensors for training and evaluation.

The whole table moves to the device once; batches are index slices there (no DataLoader, no per-step copies).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from cmkdtool.errors import CmkdError, CmkdUsageError
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
    #: where the feature columns live (``data.placement``): device, host or stream
    placement: str = "device"
    #: the training device when the inputs are not device tensors (host and stream placements)
    place: torch.device | None = None

    def index(self, split: str) -> Tensor:
        idx = np.nonzero(self.split == split)[0]
        return torch.as_tensor(idx, dtype=torch.long, device=self.device)

    def count(self, split: str) -> int:
        return int((self.split == split).sum())

    @property
    def device(self) -> torch.device:
        return self.place if self.place is not None else next(iter(self.inputs.values())).device

    def __len__(self) -> int:
        return len(self.ids)


def batch_plan(rows: int, batch_size: int | None, world: int = 1) -> tuple[int, int]:
    """(batch size, steps per epoch) of ``rows`` train rows in global batches of ``batch_size`` (None: all)
    shared by ``world`` processes: a last batch of fewer than 2 x world rows joins the previous one (in one
    process: a lone row, which BatchNorm cannot train on); a batch that leaves a process fewer than 2 rows is a
    usage error."""
    bs = rows if batch_size is None else min(batch_size, rows)
    if world > 1 and bs < 2 * world:
        raise CmkdUsageError(
            f"--batch-size {bs} under {world} processes leaves a process fewer than 2 rows; use at least {2 * world}"
        )
    return bs, (max(1, rows // bs + (rows % bs >= 2 * world)) if rows else 0)


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


MAX_DERIVED_CLASSES = 1_000_000
"""Most classes a table's labels may imply without ``class_names`` metadata (the class count is then the
largest label + 1, and the model, the one-hot targets and the per-class checks all grow with it)."""
SPARSE_FACTOR = 1000
"""A largest label + 1 above this many times the number of distinct labels means the labels are ids (e.g.
1000000000000, 5, 7), not class indices 0..C-1."""


def _distinct_labels(labels: np.ndarray, task: str) -> np.ndarray:
    if task == "multiclass":
        return np.unique(labels)
    flat = [np.asarray(v, dtype=np.int64) for v in labels]
    return np.unique(np.concatenate(flat)) if flat else np.zeros(0, np.int64)


def _check_class_indices(name: str, labels: np.ndarray, task: str, hi: int) -> None:
    """The class count is about to be taken from the largest label: refuse one that cannot be a class index
    (it would size the model and a (classes,) or (rows, classes) array: 931 GiB for a label of 1e12)."""
    classes = hi + 1
    if classes <= SPARSE_FACTOR:
        return
    distinct = len(_distinct_labels(labels, task))
    column = "label" if task == "multiclass" else "labels"
    if classes > SPARSE_FACTOR * distinct:
        raise CmkdError(
            f"{name}: labels must be class indices 0..C-1; found label {hi} among {distinct} distinct values "
            f"in column '{column}'; re-map the labels to 0..C-1 (e.g. numpy.unique(labels, return_inverse=True))"
        )
    if classes > MAX_DERIVED_CLASSES:
        raise CmkdError(
            f"{name}: label {hi} in column '{column}' would make {classes} classes (at most "
            f"{MAX_DERIVED_CLASSES} are taken from the labels); re-map the labels to 0..C-1, or declare the "
            "classes in the table's class_names metadata"
        )


def _check_two_classes(name: str, labels: np.ndarray, task: str, names: list[str] | None) -> None:
    """Training with a class count taken from the table: one class (or none) trains a model that is always
    right (accuracy 1.0) and learns nothing."""
    distinct = _distinct_labels(labels, task)
    if len(distinct) >= 2:
        return
    column = "label" if task == "multiclass" else "labels"
    if len(distinct) == 0:
        found = f"column '{column}' holds no label at all"
    else:
        c = int(distinct[0])
        shown = f"{c} ('{names[c]}')" if names and c < len(names) else str(c)
        found = f"every row has class {shown} in column '{column}'"
    fix = "add rows of other classes"
    if task == "multilabel":
        fix += " (a yes/no task is a 'label' column of 0 and 1)"
    raise CmkdError(f"{name}: {found}, and a classifier needs at least two classes; check the label column or {fix}")


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
    from the table's class names or the largest label; a largest label far beyond the number of distinct
    labels (ids, not class indices) is an error, before anything is allocated for it. ``require_train_classes``
    (training) makes a class with no train row an error (a model cannot learn it), and, where the class count
    comes from the table, fewer than two classes (a one-class model is always right and learns nothing).
    """
    name = table.name
    for c in inputs:
        table.require(c, "feature column")
    shapes = {c: table.shape(c) for c in inputs}
    arrays = {c: table.array(c) for c in inputs if c not in table.lazy}  # lazy (streamed) columns stay on disk
    split = table.split_array(split_ratio, split_seed)
    task = labels = target = None
    names = table.class_names()
    if need_labels or table.has_labels():
        task = table.task()
        labels = table.label_array()
        lo, hi = _label_range(labels, task)
        if lo < 0:
            column = "label" if task == "multiclass" else "labels"
            raise CmkdError(
                f"{name}: negative label {lo} in column '{column}'; labels are class indices 0..C-1: re-map them"
            )
        derived = num_classes is None
        if derived and not names:
            _check_class_indices(name, labels, task, hi)
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
            if derived:
                _check_two_classes(name, labels, task, names)
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
