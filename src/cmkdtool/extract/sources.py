"""Where ``cmkdtool extract`` finds its samples: a folder with one subfolder per class, or a manifest.

Folder: ``ROOT/<class>/.../<file>``. Class names are the subfolder names (sorted; label ``i`` is the ``i``-th
name), the id of a sample is its path relative to ROOT *without the extension*, with ``/`` separators
(``3/0042`` for ``ROOT/3/0042.png``), so the image ``3/0042.png`` and the sound ``3/0042.wav`` of one sample get
the same id in two separate extracts and their tables join. Files directly in ROOT (no class folder) are
unlabelled samples. For video, a *clip* is a folder of frame images (``ROOT/<class>/<clip>/<frames>``) or a
video file.

Manifest (``.csv`` or ``.parquet``): columns ``id`` and ``path`` (or the column ``--path-column`` names;
relative paths are relative to the manifest's folder), optional ``label`` (integers, or class names: mapped
to indices by sorted name) or ``labels`` (multi-label: a list column in Parquet; in CSV class names or
integers separated by ``;``), optional ``split`` (train/val/test); labels and splits follow the rules of
``extract array`` (extract/arrays.py: ``label_column``, ``split_column``). ``extract text`` also accepts a ``text``
column holding the text itself.

Without a ``split`` column every sample gets one by hashing its id (``--split-ratio``, ``--split-seed``;
the same rule every other command uses), so separate extracts of one dataset agree on the split.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from cmkdtool.errors import CmkdError, CmkdUsageError

MANIFEST_SUFFIXES = (".csv", ".parquet", ".pq")


@dataclass
class Item:
    """One sample to extract: its id, where it lives (a file or a folder of frames) or its text, its labels."""

    id: str
    path: str | None = None
    text: str | None = None
    label: int | None = None
    labels: list[int] | None = None
    split: str | None = None

    @property
    def where(self) -> str:
        return self.path if self.path is not None else f"id {self.id}"


@dataclass
class Source:
    items: list[Item]
    class_names: list[str] | None
    task: str | None  # "multiclass", "multilabel" or None (no labels)
    description: dict = field(default_factory=dict)


def _id_of(rel: Path, is_file: bool = True) -> str:
    """A file's relative path without its extension; a folder (a clip of frames) keeps its whole name."""
    return rel.with_suffix("").as_posix() if is_file and rel.suffix else rel.as_posix()


def _is_frames_folder(path: Path, frame_exts: tuple[str, ...]) -> bool:
    return any(p.is_file() and p.suffix.lower() in frame_exts for p in path.iterdir())


def _walk(folder: Path, exts: tuple[str, ...], clip_exts: tuple[str, ...]) -> list[Path]:
    """Sample paths under ``folder`` (sorted): files with ``exts``; with ``clip_exts`` (video), folders that
    hold frame images of those extensions are samples too (not descended into)."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))  # .ipynb_checkpoints, .git, ...
        here = Path(dirpath)
        if clip_exts and here != folder and any(Path(f).suffix.lower() in clip_exts for f in filenames):
            found.append(here)
            dirnames.clear()
            continue
        found.extend(here / f for f in sorted(filenames) if Path(f).suffix.lower() in exts and not f.startswith("."))
    return sorted(found)


def from_folder(root: str, exts: tuple[str, ...], clip_exts: tuple[str, ...] = ()) -> Source:
    """Samples of a class-per-subfolder tree (see the module docstring)."""
    base = Path(root)
    classes = sorted(p.name for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))
    if clip_exts and classes and all(_is_frames_folder(base / c, clip_exts) for c in classes):
        classes = []  # ROOT/<clip>/<frames>: unlabelled clips, not class folders
    items: list[Item] = []
    top = [p for p in sorted(base.iterdir()) if p.is_file() and p.suffix.lower() in exts and not p.name.startswith(".")]
    if clip_exts and not classes:
        top += [p for p in sorted(base.iterdir()) if p.is_dir() and _is_frames_folder(p, clip_exts)]
    for p in sorted(top):
        items.append(Item(_id_of(p.relative_to(base), p.is_file()), str(p)))
    for label, name in enumerate(classes):
        for p in _walk(base / name, exts, clip_exts):
            items.append(Item(_id_of(p.relative_to(base), p.is_file()), str(p), label=label))
    if not items:
        what = ", ".join(sorted(set(exts + clip_exts)))
        raise CmkdError(f"{root}: no input files found ({what}); give a folder with one subfolder per class")
    _check_unique(items, root, "ids are paths without extension, so rename one of them")
    labelled = [i for i in items if i.label is not None]
    if labelled and len(labelled) != len(items):
        raise CmkdError(f"{root}: has files both in class subfolders and at the top; move them into class folders")
    return Source(
        items,
        classes or None,
        "multiclass" if classes else None,
        {"source": str(root), "layout": "folder", "classes": len(classes)},
    )


def _check_unique(items: list[Item], where: str, fix: str) -> None:
    seen: dict[str, str] = {}
    for it in items:
        if it.id in seen:
            raise CmkdError(f"{where}: two samples have id '{it.id}' ({seen[it.id]} and {it.where}); {fix}")
        seen[it.id] = it.where


def _read_manifest_table(path: str):
    import pyarrow as pa
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    try:
        if path.lower().endswith(".csv"):
            strings = {c: pa.string() for c in ("id", "path", "split", "labels", "text")}
            return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(column_types=strings))
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise CmkdError(
            f"{path}: not a readable manifest ({str(e).splitlines()[0]}); give a CSV or Parquet file"
        ) from e


def from_manifest(path: str, path_column: str = "path", text_column: str | None = None) -> Source:
    """Samples listed in a CSV or Parquet manifest (see the module docstring)."""
    table = _read_manifest_table(path)
    cols = table.column_names
    if "id" not in cols:
        raise CmkdError(f"{path}: manifest has no 'id' column (columns: {', '.join(cols)}); add one")
    source_col = path_column if path_column in cols else (text_column if text_column in cols else None)
    if source_col is None:
        want = f"'{path_column}'" + (f" or '{text_column}'" if text_column else "")
        raise CmkdError(
            f"{path}: manifest has no {want} column (columns: {', '.join(cols)}); add it or pass --path-column"
        )
    ids = table.column("id").to_pylist()
    if any(i is None or str(i) == "" for i in ids):
        raise CmkdError(f"{path}: an 'id' is empty; give every row an id")
    ids = [str(i) for i in ids]
    values = table.column(source_col).to_pylist()
    if any(v is None for v in values):
        raise CmkdError(f"{path}: column '{source_col}' has an empty value; fill it or drop the row")
    base = Path(path).parent
    items = []
    for i, v in zip(ids, values, strict=True):
        if source_col == text_column:
            items.append(Item(i, text=str(v)))
        else:
            p = Path(str(v))
            items.append(Item(i, str(p if p.is_absolute() else base / p)))
    names = None
    task = None
    if "label" in cols or "labels" in cols:
        from cmkdtool.extract.arrays import label_column

        multi = "label" not in cols
        name = "labels" if multi else "label"
        labels, names = label_column(table.column(name), f"column '{name}'", path, ids, multi)
        for it, lab in zip(items, labels, strict=True):
            if multi:
                it.labels = lab
            else:
                it.label = lab
        task = "multilabel" if multi else "multiclass"
    if "split" in cols:
        from cmkdtool.extract.arrays import split_column

        for it, s in zip(items, split_column(table.column("split"), "column 'split'", path, ids), strict=True):
            it.split = s
    _check_unique(items, path, "ids must be unique")
    from cmkdtool.io.tables import file_sha256

    description = {"source": str(path), "sha256": file_sha256(path), "layout": "manifest", "column": source_col}
    return Source(items, names, task, description)


def read_source(
    source: str,
    exts: tuple[str, ...],
    *,
    clip_exts: tuple[str, ...] = (),
    path_column: str = "path",
    text_column: str | None = None,
) -> Source:
    """A folder (class subfolders) or a manifest file; ``exts`` are the media file extensions to collect."""
    p = Path(source)
    if not p.exists():
        raise CmkdError(f"{source}: no such file or folder; give a folder with one subfolder per class or a manifest")
    if p.is_dir():
        return from_folder(source, exts, clip_exts)
    if p.suffix.lower() in MANIFEST_SUFFIXES:
        return from_manifest(source, path_column, text_column)
    raise CmkdUsageError(
        f"{source}: not a folder or a manifest (.csv, .parquet); give a folder with one subfolder per class"
    )


def assign_splits(items: list[Item], ratio, seed: int) -> None:
    """Give every item without a split one by the id hash (as tables without a 'split' column get)."""
    from cmkdtool.io.tables import hash_split

    todo = [it for it in items if it.split is None]
    for it, s in zip(todo, hash_split([it.id for it in todo], ratio, seed), strict=True):
        it.split = str(s)
