"""``cmkdtool extract image|audio|video|text|array``: media folders, manifests or arrays -> a feature table."""

from __future__ import annotations

from typing import Annotated

import typer

from cmkdtool.cli.common import (
    DeviceOpt,
    PrecisionOpt,
    QuietOpt,
    SplitSeedOpt,
    check_output,
    command_line,
    guard,
    note,
    parse_floats,
    parse_ints,
    split_rule,
)
from cmkdtool.errors import CmkdError, CmkdUsageError

app = typer.Typer(
    help="Turn a folder with one subfolder per class (or a CSV/Parquet manifest: id, path, label/labels, split) "
    "into a feature table. Ids are paths relative to the folder without extension, so the image, sound and "
    "text of one sample get the same id in separate extracts and their tables join. Interrupted runs continue "
    "with --resume.",
    no_args_is_help=True,
)

SourceArg = Annotated[
    str, typer.Argument(help="A folder with one subfolder per class (files at the top: unlabelled) or a manifest.")
]
OutOpt = Annotated[str, typer.Option("--output", "-o", help="Output Parquet feature table.")]
NameOpt = Annotated[str | None, typer.Option("--name", help="Name of the feature column [default: the kind].")]
PathColumnOpt = Annotated[str, typer.Option("--path-column", help="Manifest column with the file paths.")]
SplitRatioOpt = Annotated[
    str,
    typer.Option(
        "--split-ratio",
        help="train,val,test fractions for samples without a manifest 'split' (assigned by hashing the id with "
        "--split-seed: the same split in every extract of the dataset).",
    ),
]
BatchOpt = Annotated[int, typer.Option("--batch-size", help="Samples per batch through the model.", min=1)]
WorkersOpt = Annotated[
    int | None,
    typer.Option(
        "--workers",
        help="DataLoader worker processes decoding files [default: CPU cores - 1, max 8; 0 with 2 cores or fewer].",
        min=0,
    ),
]
ResumeOpt = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue an interrupted run (OUTPUT.partial/) and skip ids already in OUTPUT; same options required.",
    ),
]
ChunkOpt = Annotated[
    int,
    typer.Option(
        "--chunk-rows", help="Rows per resumable part: at most this much work is lost when a run is killed.", min=1
    ),
]
OnErrorOpt = Annotated[
    str,
    typer.Option(
        "--on-error",
        help="skip: report unreadable files at the end and in the table metadata, keep the rest; fail: stop at "
        "the first one.",
    ),
]


def _sizes(text: str | None, what: str) -> list[int] | None:
    return parse_ints(text, what) if text else None


def _floats(text: str | None, what: str) -> list[float] | None:
    return parse_floats(text, what) if text else None


def _default_workers(n_items: int) -> int:
    """Decoding is a few % of a CNN's CPU time: on 2 cores a worker only competes with the model's threads
    (benchmarks/extract.py: 0 workers 19.4 img/s, 1 worker 17.2 img/s); with more cores (or a GPU) it pays."""
    import os

    cores = os.cpu_count() or 1
    return 0 if n_items < 64 or cores <= 2 else min(8, cores - 1)


def _check_not_a_sample(output: str, source) -> None:
    import os

    out = os.path.realpath(output)
    for item in source.items:
        if item.path is not None and os.path.realpath(item.path) == out:
            raise CmkdUsageError(f"output {output} is also an input ({item.id}); write to another file")


def _run(
    kind: str,
    source_path: str,
    output: str,
    extractor,
    *,
    exts: tuple[str, ...],
    name: str | None,
    path_column: str,
    split_ratio: str,
    split_seed: int,
    batch_size: int,
    workers: int | None,
    device: str,
    precision: str,
    resume: bool,
    chunk_rows: int,
    on_error: str,
    quiet: bool,
    clip_exts: tuple[str, ...] = (),
    unit: str = "file",
    source=None,
    inputs: tuple = (),
) -> None:
    from cmkdtool import __version__
    from cmkdtool.extract.runner import ON_ERROR, error_record, run_extract
    from cmkdtool.extract.sources import assign_splits, read_source
    from cmkdtool.extract.writer import ExtractWriter

    if on_error not in ON_ERROR:
        raise CmkdUsageError(f"unknown --on-error '{on_error}'; choose skip or fail")
    check_output(output, source_path, *[p for p in inputs if p])
    column = name or kind
    if source is None:
        source = read_source(source_path, exts, clip_exts=clip_exts, path_column=path_column)
    _check_not_a_sample(output, source)
    ratio, seed = split_rule(split_ratio, split_seed)
    assign_splits(source.items, ratio, seed)
    settings = extractor.settings()
    writer = ExtractWriter(
        output,
        column,
        settings,
        resume=resume,
        task=source.task,
        class_names=source.class_names,
        split_rule=[ratio, seed],
        chunk_rows=chunk_rows,
    )
    result = run_extract(
        source,
        extractor,
        writer,
        batch_size=batch_size,
        workers=_default_workers(len(source.items)) if workers is None else workers,
        device=device,
        precision=precision,
        on_error=on_error,
        quiet=quiet,
        unit=unit,
    )
    meta = {
        "tool": "cmkdtool",
        "version": __version__,
        "command": command_line(),
        "class_names": source.class_names,
        "extract": {
            "kind": kind,
            "column": column,
            "settings": settings,
            "task": source.task,
            "source": source.description,
            "split_ratio": ratio,
            "split_seed": seed,
            "samples": len(source.items),
            "errors": error_record(result.errors),
        },
    }
    if source.class_names is None:
        del meta["class_names"]
    if writer.shape is None and result.errors:
        first = result.errors[0]
        raise CmkdError(
            f"{output}: no sample could be extracted, nothing written; {len(result.errors)} failed, the first: "
            f"{first['path']}: {first['error']}"
        )
    rows = writer.finish(meta)
    rate = result.written / result.seconds if result.seconds > 0 else float("nan")
    resumed = f", {result.skipped} already there" if result.skipped else ""
    note(
        f"wrote {output}: {rows} rows, column '{column}' of shape {list(writer.shape)} "
        f"({result.written} new at {rate:.1f}/s{resumed})",
        quiet,
    )
    if result.errors:  # a warning, shown also with --quiet
        shown = result.errors[:20]
        lines = "".join(f"\n  {e['path']}: {e['error']}" for e in shown)
        more = f"\n  ... and {len(result.errors) - len(shown)} more" if len(result.errors) > len(shown) else ""
        note(
            f"cmkdtool: warning: skipped {len(result.errors)} unreadable sample(s), listed in the table metadata:"
            f"{lines}{more}"
        )


# ------------------------------------------------------------------------------------------------ image

ModeOpt = Annotated[str, typer.Option("--mode", help="rgb (3 channels) or gray (1 channel; --raw only).")]
ResizeOpt = Annotated[
    str | None,
    typer.Option("--resize", help="Shorter side in pixels (S) or exact H,W [default: the weights' own; raw: none]."),
]
CropOpt = Annotated[
    str | None, typer.Option("--crop", help="Center crop S or H,W pixels [default: the weights' own; raw: none].")
]
MeanOpt = Annotated[
    str | None,
    typer.Option(
        "--mean", help="Per-channel mean subtracted after scaling to [0,1] [default: the weights'; raw: none]."
    ),
]
StdOpt = Annotated[str | None, typer.Option("--std", help="Per-channel std divided by (with --mean).")]
RawOpt = Annotated[bool, typer.Option("--raw", help="Store the preprocessed pixels [C, H, W] instead of features.")]
BackboneOpt = Annotated[
    str | None,
    typer.Option("--backbone", help="torchvision model name: resnet18, resnet50, mobilenet_v3_large, vit_b_16, ..."),
]
WeightsOpt = Annotated[
    str | None,
    typer.Option(
        "--weights",
        help="torchvision weights name (IMAGENET1K_V1, DEFAULT, ...), from the torch hub cache or downloaded.",
    ),
]
CheckpointOpt = Annotated[
    str | None,
    typer.Option("--checkpoint", help="Local backbone weights: .safetensors, or a .pth state dict (weights only)."),
]
LayerOpt = Annotated[
    str | None,
    typer.Option(
        "--layer", help="Module to take (named_modules name, e.g. layer4) [default: input of the last linear]."
    ),
]
PoolOpt = Annotated[
    str, typer.Option("--pool", help="avg or max over spatial axes / tokens, or none (keep the map with its shape).")
]


def _backbone_features(backbone, weights, checkpoint, layer, pool, quiet):
    from cmkdtool.extract.backbones import LayerFeatures, build_backbone

    model, record = build_backbone(backbone, weights, checkpoint, quiet)
    return LayerFeatures(model, layer, pool, channels_last=backbone.startswith("swin")), record


def _image_prep(mode, resize, crop, mean, std, backbone, weights, raw):
    from cmkdtool.extract.backbones import default_transform
    from cmkdtool.extract.image import ImagePrep

    if raw == bool(backbone):
        raise CmkdUsageError("give --backbone NAME (features) or --raw (pixels)")
    resize_, crop_, mean_, std_ = (
        _sizes(resize, "--resize"),
        _sizes(crop, "--crop"),
        _floats(mean, "--mean"),
        _floats(std, "--std"),
    )
    if backbone:
        if mode != "rgb":
            raise CmkdUsageError("torchvision backbones take RGB images; drop --mode gray")
        d_resize, d_crop, d_mean, d_std = default_transform(backbone, weights)
        resize_ = resize_ or d_resize
        crop_ = crop_ or d_crop
        if mean_ is None and std_ is None:
            mean_, std_ = d_mean, d_std
    return ImagePrep(mode, resize_, crop_, mean_, std_)


@app.command("image", no_args_is_help=True)
@guard
def image(
    source: SourceArg,
    output: OutOpt,
    raw: RawOpt = False,
    backbone: BackboneOpt = None,
    weights: WeightsOpt = None,
    checkpoint: CheckpointOpt = None,
    layer: LayerOpt = None,
    pool: PoolOpt = "avg",
    mode: ModeOpt = "rgb",
    resize: ResizeOpt = None,
    crop: CropOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    name: NameOpt = None,
    path_column: PathColumnOpt = "path",
    split_ratio: SplitRatioOpt = "0.8,0.1,0.1",
    split_seed: SplitSeedOpt = 0,
    batch_size: BatchOpt = 32,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    resume: ResumeOpt = False,
    chunk_rows: ChunkOpt = 1024,
    on_error: OnErrorOpt = "skip",
    quiet: QuietOpt = False,
) -> None:
    """Images (PNG, JPEG, WebP, GIF) -> pooled features of a torchvision backbone, or raw pixels with --raw."""
    from cmkdtool.extract.image import IMAGE_EXTS, ImageExtractor

    if raw and (weights or checkpoint or layer):
        raise CmkdUsageError("--weights, --checkpoint and --layer need --backbone; --raw stores pixels")
    prep = _image_prep(mode, resize, crop, mean, std, backbone, weights, raw)
    features, record = (
        _backbone_features(backbone, weights, checkpoint, layer, pool, quiet) if backbone else (None, None)
    )
    _run(
        "image",
        source,
        output,
        ImageExtractor(prep, features, record),
        exts=IMAGE_EXTS,
        **_common(name, path_column, split_ratio, split_seed, batch_size, workers, device, precision),
        resume=resume,
        chunk_rows=chunk_rows,
        on_error=on_error,
        quiet=quiet,
        unit="img",
        inputs=(checkpoint,),
    )


def _common(name, path_column, split_ratio, split_seed, batch_size, workers, device, precision) -> dict:
    return {
        "name": name,
        "path_column": path_column,
        "split_ratio": split_ratio,
        "split_seed": split_seed,
        "batch_size": batch_size,
        "workers": workers,
        "device": device,
        "precision": precision,
    }


# ------------------------------------------------------------------------------------------------ audio

FeaturesOpt = Annotated[
    str, typer.Option("--features", help="mfcc, logmel (dB mel spectrogram) or spectrogram (dB power).")
]
RateOpt = Annotated[int, typer.Option("--sample-rate", help="Resample to this rate (Hz).", min=1)]
DurationOpt = Annotated[
    float | None,
    typer.Option("--duration", help="Crop or zero-pad every clip to this many seconds [default: keep lengths]."),
]
NfftOpt = Annotated[int, typer.Option("--n-fft", help="FFT size in samples (400 = 25 ms at 16 kHz).")]
HopOpt = Annotated[int, typer.Option("--hop", help="Hop between frames in samples (160 = 10 ms at 16 kHz).")]
WinOpt = Annotated[int | None, typer.Option("--win-length", help="Window length in samples [default: --n-fft].")]
WindowOpt = Annotated[str, typer.Option("--window", help="hann or hamming.")]
MelsOpt = Annotated[int, typer.Option("--n-mels", help="Mel bands (logmel, mfcc).")]
MfccOpt = Annotated[int, typer.Option("--n-mfcc", help="MFCC coefficients.")]
FminOpt = Annotated[float, typer.Option("--f-min", help="Lowest mel frequency (Hz).")]
FmaxOpt = Annotated[float | None, typer.Option("--f-max", help="Highest mel frequency (Hz) [default: rate / 2].")]
TimePoolOpt = Annotated[
    str,
    typer.Option("--pool", help="none (store the [1, F, T] map, e.g. for --arch cnn2d), mean or mean+std over time."),
]


@app.command("audio", no_args_is_help=True)
@guard
def audio(
    source: SourceArg,
    output: OutOpt,
    features: FeaturesOpt = "mfcc",
    sample_rate: RateOpt = 16000,
    duration: DurationOpt = None,
    n_fft: NfftOpt = 400,
    hop: HopOpt = 160,
    win_length: WinOpt = None,
    window: WindowOpt = "hann",
    n_mels: MelsOpt = 64,
    n_mfcc: MfccOpt = 40,
    f_min: FminOpt = 0.0,
    f_max: FmaxOpt = None,
    pool: TimePoolOpt = "mean+std",
    name: NameOpt = None,
    path_column: PathColumnOpt = "path",
    split_ratio: SplitRatioOpt = "0.8,0.1,0.1",
    split_seed: SplitSeedOpt = 0,
    batch_size: BatchOpt = 32,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    resume: ResumeOpt = False,
    chunk_rows: ChunkOpt = 1024,
    on_error: OnErrorOpt = "skip",
    quiet: QuietOpt = False,
) -> None:
    """Sound files (WAV, FLAC, OGG, MP3; more with torchcodec) -> MFCC, log-mel or log spectrogram features."""
    from cmkdtool.extract.audio import AUDIO_EXTS, AudioExtractor, AudioFeatures

    settings = AudioFeatures(
        features, sample_rate, duration, n_fft, hop, win_length, window, n_mels, n_mfcc, f_min, f_max, pool
    )
    _run(
        "audio",
        source,
        output,
        AudioExtractor(settings),
        exts=AUDIO_EXTS,
        **_common(name, path_column, split_ratio, split_seed, batch_size, workers, device, precision),
        resume=resume,
        chunk_rows=chunk_rows,
        on_error=on_error,
        quiet=quiet,
        unit="clip",
    )


# ------------------------------------------------------------------------------------------------ video

FramesOpt = Annotated[int, typer.Option("--frames", help="Frames sampled uniformly over each clip.", min=1)]
TemporalPoolOpt = Annotated[
    str,
    typer.Option(
        "--temporal-pool",
        help="Image backbones: mean or max of the per-frame features over time, or none (a [T, F] sequence).",
    ),
]
VideoBackboneOpt = Annotated[
    str,
    typer.Option(
        "--backbone",
        help="torchvision video model (r2plus1d_18, r3d_18, mc3_18, s3d, ...) or image model applied per frame.",
    ),
]


@app.command("video", no_args_is_help=True)
@guard
def video(
    source: SourceArg,
    output: OutOpt,
    backbone: VideoBackboneOpt = "r2plus1d_18",
    weights: WeightsOpt = None,
    checkpoint: CheckpointOpt = None,
    layer: LayerOpt = None,
    pool: PoolOpt = "avg",
    frames: FramesOpt = 16,
    temporal_pool: TemporalPoolOpt = "mean",
    resize: ResizeOpt = None,
    crop: CropOpt = None,
    mean: MeanOpt = None,
    std: StdOpt = None,
    name: NameOpt = None,
    path_column: PathColumnOpt = "path",
    split_ratio: SplitRatioOpt = "0.8,0.1,0.1",
    split_seed: SplitSeedOpt = 0,
    batch_size: BatchOpt = 8,
    workers: WorkersOpt = None,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    resume: ResumeOpt = False,
    chunk_rows: ChunkOpt = 1024,
    on_error: OnErrorOpt = "skip",
    quiet: QuietOpt = False,
) -> None:
    """Clips (folders of frame images, or video files with torchcodec) -> a video backbone's pooled embedding,
    or per-frame image-backbone features pooled over time."""
    from cmkdtool.extract.backbones import is_video_model
    from cmkdtool.extract.image import IMAGE_EXTS
    from cmkdtool.extract.video import VIDEO_EXTS, VideoExtractor

    prep = _image_prep("rgb", resize, crop, mean, std, backbone, weights, False)
    features, record = _backbone_features(backbone, weights, checkpoint, layer, pool, quiet)
    extractor = VideoExtractor(prep, frames, features, record, is_video_model(backbone), temporal_pool)
    _run(
        "video",
        source,
        output,
        extractor,
        exts=VIDEO_EXTS,
        clip_exts=IMAGE_EXTS,
        **_common(name, path_column, split_ratio, split_seed, batch_size, workers, device, precision),
        resume=resume,
        chunk_rows=chunk_rows,
        on_error=on_error,
        quiet=quiet,
        unit="clip",
        inputs=(checkpoint,),
    )


# ------------------------------------------------------------------------------------------------- text

EncoderOpt = Annotated[
    str,
    typer.Option(
        "--encoder",
        help="hashing (built-in bag of words, no download) or sentence-transformers:NAME (needs the 'text' extra; "
        "all-MiniLM-L6-v2 is packaged for offline use).",
    ),
]
DimOpt = Annotated[int, typer.Option("--dim", help="hashing: number of hash buckets (features).", min=1)]
NgramOpt = Annotated[int, typer.Option("--ngrams", help="hashing: word n-grams up to this n (2 = words and pairs).")]
TfidfOpt = Annotated[bool, typer.Option("--tfidf", help="hashing: weight by inverse document frequency (train split).")]
SublinearOpt = Annotated[bool, typer.Option("--sublinear", help="hashing: term frequency 1 + ln(count).")]
DownloadOpt = Annotated[
    bool, typer.Option("--allow-download", help="sentence-transformers: download a model missing from the cache.")
]
TEXT_EXTS = (".txt", ".md")


def _text_source(source_path: str, path_column: str):
    from pathlib import Path

    from cmkdtool.extract.sources import Item, Source, read_source
    from cmkdtool.extract.text import read_texts

    if Path(source_path).suffix.lower() == ".txt" and Path(source_path).is_file():
        texts = read_texts(source_path)
        items = [Item(i, text=t) for i, t in zip(texts.ids, texts.texts, strict=True)]
        return Source(items, None, None, {"source": source_path, "layout": "lines"})
    return read_source(source_path, TEXT_EXTS, path_column=path_column, text_column="text")


@app.command("text", no_args_is_help=True)
@guard
def text(
    source: Annotated[
        str,
        typer.Argument(
            help="A .txt file (one sample per line, ids line-000001...), a folder of class subfolders of .txt "
            "files, or a manifest with a 'text' (or 'path') column."
        ),
    ],
    output: OutOpt,
    encoder: EncoderOpt = "hashing",
    dim: DimOpt = 4096,
    ngrams: NgramOpt = 1,
    tfidf: TfidfOpt = False,
    sublinear: SublinearOpt = False,
    allow_download: DownloadOpt = False,
    name: NameOpt = None,
    path_column: PathColumnOpt = "path",
    split_ratio: SplitRatioOpt = "0.8,0.1,0.1",
    split_seed: SplitSeedOpt = 0,
    batch_size: BatchOpt = 64,
    workers: WorkersOpt = 0,
    device: DeviceOpt = "auto",
    precision: PrecisionOpt = "auto",
    resume: ResumeOpt = False,
    chunk_rows: ChunkOpt = 1024,
    on_error: OnErrorOpt = "skip",
    quiet: QuietOpt = False,
) -> None:
    """Texts -> hashed bag-of-words / TF-IDF vectors (L2-normalised) or sentence-transformers embeddings."""
    from cmkdtool.extract.sources import assign_splits
    from cmkdtool.extract.text import TextExtractor, make_encoder

    src = _text_source(source, path_column)
    enc = make_encoder(
        encoder,
        dim=dim,
        ngrams=ngrams,
        tfidf=tfidf,
        sublinear=sublinear,
        device=device,
        batch_size=batch_size,
        allow_download=allow_download,
    )
    extractor = TextExtractor(enc)
    if tfidf and encoder == "hashing":  # document frequencies from the train split only
        ratio, seed = split_rule(split_ratio, split_seed)
        assign_splits(src.items, ratio, seed)
        texts = []
        for it in (it for it in src.items if it.split == "train"):
            try:
                texts.append(extractor.load(it))
            except CmkdError:  # unreadable: reported (or fatal with --on-error fail) by the extraction itself
                pass
        enc.fit(texts)
    _run(
        "text",
        source,
        output,
        extractor,
        exts=TEXT_EXTS,
        **_common(name, path_column, split_ratio, split_seed, batch_size, workers, device, precision),
        resume=resume,
        chunk_rows=chunk_rows,
        on_error=on_error,
        quiet=quiet,
        unit="text",
        source=src,
    )


# ------------------------------------------------------------------------------------------------ array


@app.command("array", no_args_is_help=True)
@guard
def array(
    source: Annotated[str, typer.Argument(help="Features: .npy, .npz, .csv/.tsv or .safetensors (N rows).")],
    output: OutOpt,
    key: Annotated[
        str | None, typer.Option("--key", help="Array to take from .npz/.safetensors [default: the only float one].")
    ] = None,
    meta: Annotated[
        str | None,
        typer.Option(
            "--meta", help="Sidecar CSV/Parquet with id, label or labels, split: in the same row order, or by id."
        ),
    ] = None,
    name: NameOpt = None,
    split_ratio: SplitRatioOpt = "0.8,0.1,0.1",
    split_seed: SplitSeedOpt = 0,
    quiet: QuietOpt = False,
) -> None:
    """Arrays you already computed (embeddings, spectrograms) -> a feature table, keeping the sample shape.

    Ids, labels and splits come from the file itself (.npz arrays id/label/labels/split, CSV columns) or from
    --meta; without ids the row numbers are the ids."""
    from cmkdtool import __version__
    from cmkdtool.extract.arrays import read_array_source
    from cmkdtool.io.tables import build_table, hash_split, write_table

    check_output(output, source, *([meta] if meta else []))
    src = read_array_source(source, key, meta)
    ratio, seed = split_rule(split_ratio, split_seed)
    split = src.split if src.split is not None else list(hash_split(src.ids, ratio, seed))
    column = name or "array"
    task = "multiclass" if src.label is not None else ("multilabel" if src.labels is not None else None)
    info = {"kind": "array", "column": column, "settings": src.config, "task": task}
    if src.split is None:
        info.update(split_ratio=ratio, split_seed=seed)
    table_meta = {"tool": "cmkdtool", "version": __version__, "command": command_line(), "extract": info}
    if src.class_names is not None:
        table_meta["class_names"] = src.class_names
    table = build_table(src.ids, {column: src.values}, label=src.label, labels=src.labels, split=split, meta=table_meta)
    write_table(table, output)
    note(f"wrote {output}: {src.num_rows} rows, column '{column}' of shape {list(src.sample_shape)}", quiet)
