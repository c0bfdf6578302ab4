"""The loop shared by every ``cmkdtool extract`` kind: decode in DataLoader workers, encode in batches on the
device, stream rows to the resumable writer, report unreadable files without losing the rest.

An *extractor* (image, audio, video, text, array) provides:

- ``load(item) -> Tensor``: read and preprocess one sample on the CPU (runs in the worker processes; raises
  on an unreadable or undecodable file);
- ``setup(device, precision)``: move its model, if any, to the device (called once, in the main process);
- ``encode(batch) -> Tensor``: (B, ...) preprocessed samples -> (B, ...) features (identity for ``--raw``);
  samples that are not tensors (texts) arrive as a list, and the features may be a numpy array;
- ``settings() -> dict``: everything that determines the features (recorded in the table, checked on resume);
- ``stores_samples`` (optional, default False): the features are the preprocessed samples themselves.

Samples of one batch must share their preprocessed shape; one that does not is reported like an unreadable
file (with a hint to resize, crop or set a duration).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

import numpy as np

from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.extract.sources import Item, Source
from cmkdtool.extract.writer import ExtractWriter

ON_ERROR = ("skip", "fail")
MAX_RECORDED_ERRORS = 1000


def check_on_error(on_error: str) -> None:
    """``on_error`` is one of ``ON_ERROR``: skip (report unreadable samples) or fail (stop at the first)."""
    if on_error not in ON_ERROR:
        raise CmkdUsageError(f"unknown --on-error '{on_error}'; choose skip or fail")


@dataclass
class ExtractResult:
    written: int
    skipped: int  # ids already in the output or in the parts of an interrupted run (--resume)
    errors: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    rows: int = 0


class _Samples:
    """Dataset over items: ``(position, tensor or None, error or None)`` so a bad file never stops a worker."""

    def __init__(self, items: list[Item], extractor) -> None:
        self.items = items
        self.extractor = extractor

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        try:
            return i, self.extractor.load(self.items[i]), None
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - any decoding failure is reported against the file
            msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            path = self.items[i].path
            return i, None, msg.removeprefix(f"{path}: ") if path else msg  # the report names the file once


def _collate(batch):
    """In the worker: ``(records, stacked)``. When every readable sample is a tensor of one shape they are
    stacked here (records then carry no values), which spares the main process a copy per batch; otherwise
    ``stacked`` is None and the values stay in the records."""
    import torch

    values = [v for _, v, e in batch if e is None]
    if values and all(torch.is_tensor(v) for v in values) and len({tuple(v.shape) for v in values}) == 1:
        return [(i, None, e) for i, _, e in batch], torch.stack(values)
    return batch, None


def _message(item: Item, error: str) -> str:
    return f"{item.where}: {error}"


def _encode(extractor, stacked, tensors: list, good: list[Item], dev, prec) -> np.ndarray:
    """Features of one batch as float32 numpy; a model that cannot take the batch is a one-line error."""
    import torch

    from cmkdtool.engine.device import autocast

    if stacked is None:
        stacked = torch.stack(tensors) if torch.is_tensor(tensors[0]) else tensors
    if torch.is_tensor(stacked):
        stacked = stacked.to(dev, non_blocking=True)
    try:
        with torch.inference_mode(), autocast(prec, dev):
            feats = extractor.encode(stacked)
    except (RuntimeError, AssertionError, ValueError, IndexError) as e:
        if isinstance(e, CmkdError):
            raise
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        size = list(stacked.shape[1:]) if torch.is_tensor(stacked) else "texts"
        raise CmkdError(
            f"{good[0].where}: the model cannot take inputs of shape {size} ({first}); check --resize/--crop "
            "against what this backbone needs"
        ) from e
    return feats.float().cpu().numpy() if torch.is_tensor(feats) else np.asarray(feats, np.float32)


def run_extract(
    source: Source,
    extractor,
    writer: ExtractWriter,
    *,
    batch_size: int = 32,
    workers: int = 0,
    device: str = "auto",
    precision: str = "auto",
    on_error: str = "skip",
    quiet: bool = False,
    unit: str = "file",
) -> ExtractResult:
    """Extract every item of ``source`` not yet written by ``writer``; rows go to ``writer`` (not finished here)."""
    from torch.utils.data import DataLoader

    from cmkdtool.engine.device import resolve_device, resolve_precision

    check_on_error(on_error)
    start = time.perf_counter()
    todo = [it for it in source.items if it.id not in writer.done_ids]
    result = ExtractResult(written=0, skipped=len(source.items) - len(todo))
    if not todo:
        result.seconds = time.perf_counter() - start
        return result

    def reject(item: Item, error: str) -> None:
        if on_error == "fail":
            raise CmkdError(f"{_message(item, error)} (pass --on-error skip to skip unreadable files)")
        result.errors.append({"id": item.id, "path": item.where, "error": error})

    from tqdm.auto import tqdm

    bar = tqdm(
        total=len(todo),
        unit=unit,
        file=sys.stderr,
        disable=quiet or not sys.stderr.isatty(),
        dynamic_ncols=True,
        desc="extract",
    )
    # the preprocessed shape of the first good sample; when resuming an extractor whose features are its
    # preprocessed samples (raw pixels, audio maps), the shape of the rows already written
    raw = getattr(extractor, "stores_samples", False)
    expected: tuple | None = tuple(writer.shape) if raw and writer.shape is not None else None
    try:
        dev = resolve_device(device)
        prec = resolve_precision(precision, dev)
        extractor.setup(dev, prec)
        loader = DataLoader(
            _Samples(todo, extractor),
            batch_size=batch_size,
            shuffle=False,
            num_workers=workers,
            collate_fn=_collate,
            persistent_workers=False,
            prefetch_factor=4 if workers > 0 else None,
        )
        for batch, stacked in loader:
            if stacked is not None and expected not in (None, tuple(stacked.shape[1:])):
                values = iter(stacked.unbind(0))  # a batch of another size: report each sample
                batch = [(i, next(values) if e is None else None, e) for i, _, e in batch]
                stacked = None
            good: list[Item] = []
            tensors = []
            for i, value, error in batch:
                item = todo[i]
                shape = tuple(stacked.shape[1:]) if stacked is not None else tuple(getattr(value, "shape", ()))
                if error is None and expected is not None and shape != expected:
                    error = (
                        f"preprocessed to shape {list(shape)}, earlier samples to {list(expected)}; "
                        f"{extractor.shape_hint}"
                    )
                if error is not None:
                    reject(item, error)
                    continue
                expected = shape if expected is None else expected
                good.append(item)
                tensors.append(value)
            if good:
                feats = _encode(extractor, stacked, tensors, good, dev, prec)
                finite = np.isfinite(feats.reshape(len(good), -1)).all(axis=1)
                if writer.shape is not None and list(feats.shape[1:]) != list(writer.shape):
                    finite[:] = False  # resuming: this batch does not fit the rows already written
                    for item in good:
                        reject(item, f"features of shape {list(feats.shape[1:])}, the table has {writer.shape}; "
                                     f"{extractor.shape_hint}")  # fmt: skip
                elif not finite.all():
                    for item in (it for it, ok in zip(good, finite, strict=True) if not ok):
                        reject(item, "features are NaN or infinite (a silent or corrupt file?)")
                good = [it for it, ok in zip(good, finite, strict=True) if ok]
                writer.add(good, feats[finite])
                result.written += len(good)
            bar.update(len(batch))
            if result.errors:
                bar.set_postfix(errors=len(result.errors), refresh=False)
    except BaseException:
        writer.abandon()
        raise
    finally:
        bar.close()
    result.seconds = time.perf_counter() - start
    return result


def error_record(errors: list[dict]) -> dict:
    """What the table's metadata keeps of the errors: the count and the first MAX_RECORDED_ERRORS."""
    return {"count": len(errors), "first": errors[:MAX_RECORDED_ERRORS]}
