"""``cmkdtool extract image|audio|video|text|array``: media folders, manifests or arrays -> a feature table."""

from __future__ import annotations

from typing import Annotated

import typer

from cmkdtool.cli import options as o
from cmkdtool.cli.common import (
    DeviceOpt,
    PrecisionOpt,
    QuietOpt,
    SplitSeedOpt,
    SummaryGroup,
    check_output,
    guard,
    note,
    parse_floats,
    parse_ints,
    split_rule,
)
from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.options import parse_split_ratio

app = typer.Typer(
    cls=SummaryGroup,
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


def _command(name: str, run, params: list, doc: str) -> None:
    """Register ``extract NAME`` with options ``params``; ``run`` gets the values as a dict."""
    app.command(name, no_args_is_help=True)(guard(o.make_command(run, params, doc)))


def common_params(batch_size: int = 32, workers: int | None = None) -> list:
    """The options every media kind shares (defaults of --batch-size and --workers by kind)."""
    return [
        o.param("output", OutOpt),
        o.param("name", NameOpt, None),
        o.param("path_column", PathColumnOpt, "path"),
        o.param("split_ratio", SplitRatioOpt, "0.8,0.1,0.1", check=parse_split_ratio),
        o.param("split_seed", SplitSeedOpt, 0),
        o.param("batch_size", BatchOpt, batch_size),
        o.param("workers", WorkersOpt, workers, ge=0),
        o.param("device", DeviceOpt, "auto"),
        o.param("precision", PrecisionOpt, "auto"),
        o.param("resume", ResumeOpt, False),
        o.param("chunk_rows", ChunkOpt, 1024),
        o.param("on_error", OnErrorOpt, "skip"),
        o.param("quiet", QuietOpt, False),
    ]


TABLE_OPTIONS = ("name", "path_column", "split_ratio", "split_seed", "batch_size", "workers", "device", "precision",
                 "resume", "chunk_rows", "on_error", "quiet")  # fmt: skip
"""The ``common_params`` that ``run_extract_table`` takes as they are."""


def _run(kind: str, kw: dict, extractor, *, source=None, inputs: tuple = ()) -> None:
    """Extract every sample of the source (or ``source``, read already) with ``extractor`` into the table and
    report (``kw``: the command's values, ``common_params`` among them)."""
    from cmkdtool.extract.runner import check_on_error
    from cmkdtool.pipelines.extract import run_extract_table

    output = kw["output"]
    check_on_error(kw["on_error"])
    check_output(output, kw["source"], *[p for p in inputs if p])
    src = kw["source"] if source is None else source
    run = run_extract_table(kind, src, extractor, output, **{k: kw[k] for k in TABLE_OPTIONS})
    resumed = f", {run.skipped} already there" if run.skipped else ""
    note(
        f"wrote {output}: {run.rows} rows, column '{run.column}' of shape {run.shape} "
        f"({run.written} new at {run.rate:.1f}/s{resumed})",
        kw["quiet"],
    )
    if run.errors:  # a warning, shown also with --quiet
        shown = run.errors[:20]
        lines = "".join(f"\n  {e['path']}: {e['error']}" for e in shown)
        more = f"\n  ... and {len(run.errors) - len(shown)} more" if len(run.errors) > len(shown) else ""
        note(
            f"cmkdtool: warning: skipped {len(run.errors)} unreadable sample(s), listed in the table metadata:"
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


def _backbone_features(kw: dict):
    from cmkdtool.extract.backbones import LayerFeatures, build_backbone

    backbone = kw["backbone"]
    model, record = build_backbone(backbone, kw["weights"], kw["checkpoint"], kw["quiet"])
    return LayerFeatures(model, kw["layer"], kw["pool"], channels_last=backbone.startswith("swin")), record


def _image_prep(kw: dict, mode: str, raw: bool):
    from cmkdtool.extract.backbones import default_transform
    from cmkdtool.extract.image import ImagePrep

    backbone, weights = kw["backbone"], kw["weights"]
    if raw == bool(backbone):
        raise CmkdUsageError("give --backbone NAME (features) or --raw (pixels)")
    resize_, crop_, mean_, std_ = (
        _sizes(kw["resize"], "--resize"),
        _sizes(kw["crop"], "--crop"),
        _floats(kw["mean"], "--mean"),
        _floats(kw["std"], "--std"),
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


IMAGE_PARAMS = [
    o.param("source", SourceArg),
    o.param("raw", RawOpt, False),
    o.param("backbone", BackboneOpt, None),
    o.param("weights", WeightsOpt, None),
    o.param("checkpoint", CheckpointOpt, None),
    o.param("layer", LayerOpt, None),
    o.param("pool", PoolOpt, "avg"),
    o.param("mode", ModeOpt, "rgb"),
    o.param("resize", ResizeOpt, None),
    o.param("crop", CropOpt, None),
    o.param("mean", MeanOpt, None),
    o.param("std", StdOpt, None),
    *common_params(batch_size=32),
]


def _image(kw: dict) -> None:
    from cmkdtool.extract.image import ImageExtractor

    if kw["raw"] and (kw["weights"] or kw["checkpoint"] or kw["layer"]):
        raise CmkdUsageError("--weights, --checkpoint and --layer need --backbone; --raw stores pixels")
    prep = _image_prep(kw, kw["mode"], kw["raw"])
    features, record = _backbone_features(kw) if kw["backbone"] else (None, None)
    extractor = ImageExtractor(prep, features, record)
    _run("image", kw, extractor, inputs=(kw["checkpoint"],))


_command(
    "image",
    _image,
    IMAGE_PARAMS,
    "Images (PNG, JPEG, WebP, GIF) -> pooled features of a torchvision backbone, or raw pixels with --raw.",
)


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


AUDIO_PARAMS = [
    o.param("source", SourceArg),
    o.param("features", FeaturesOpt, "mfcc"),
    o.param("sample_rate", RateOpt, 16000),
    o.param("duration", DurationOpt, None),
    o.param("n_fft", NfftOpt, 400),
    o.param("hop", HopOpt, 160),
    o.param("win_length", WinOpt, None),
    o.param("window", WindowOpt, "hann"),
    o.param("n_mels", MelsOpt, 64),
    o.param("n_mfcc", MfccOpt, 40),
    o.param("f_min", FminOpt, 0.0, ge=0),
    o.param("f_max", FmaxOpt, None, gt=0),
    o.param("pool", TimePoolOpt, "mean+std"),
    *common_params(batch_size=32),
]


def _audio(kw: dict) -> None:
    import dataclasses

    from cmkdtool.extract.audio import AudioExtractor, AudioFeatures

    settings = AudioFeatures(**{f.name: kw[f.name] for f in dataclasses.fields(AudioFeatures)})
    _run("audio", kw, AudioExtractor(settings))


_command(
    "audio",
    _audio,
    AUDIO_PARAMS,
    "Sound files (WAV, FLAC, OGG, MP3; more with torchcodec) -> MFCC, log-mel or log spectrogram features.",
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


VIDEO_PARAMS = [
    o.param("source", SourceArg),
    o.param("backbone", VideoBackboneOpt, "r2plus1d_18"),
    o.param("weights", WeightsOpt, None),
    o.param("checkpoint", CheckpointOpt, None),
    o.param("layer", LayerOpt, None),
    o.param("pool", PoolOpt, "avg"),
    o.param("frames", FramesOpt, 16),
    o.param("temporal_pool", TemporalPoolOpt, "mean"),
    o.param("resize", ResizeOpt, None),
    o.param("crop", CropOpt, None),
    o.param("mean", MeanOpt, None),
    o.param("std", StdOpt, None),
    *common_params(batch_size=8),
]


def _video(kw: dict) -> None:
    from cmkdtool.extract.backbones import is_video_model
    from cmkdtool.extract.video import VideoExtractor

    prep = _image_prep(kw, "rgb", False)
    features, record = _backbone_features(kw)
    video_model = is_video_model(kw["backbone"])
    extractor = VideoExtractor(prep, kw["frames"], features, record, video_model, kw["temporal_pool"])
    _run("video", kw, extractor, inputs=(kw["checkpoint"],))


_command(
    "video",
    _video,
    VIDEO_PARAMS,
    "Clips (folders of frame images, or video files with torchcodec) -> a video backbone's pooled "
    "embedding, or per-frame image-backbone features pooled over time.",
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
TEXT_PARAMS = [
    o.param(
        "source",
        Annotated[
            str,
            typer.Argument(
                help="A .txt file (one sample per line, ids line-000001...), a folder of class subfolders of .txt "
                "files, or a manifest with a 'text' (or 'path') column."
            ),
        ],
    ),
    o.param("encoder", EncoderOpt, "hashing"),
    o.param("dim", DimOpt, 4096),
    o.param("ngrams", NgramOpt, 1, ge=1),
    o.param("tfidf", TfidfOpt, False),
    o.param("sublinear", SublinearOpt, False),
    o.param("allow_download", DownloadOpt, False),
    *common_params(batch_size=64, workers=0),
]


def _text(kw: dict) -> None:
    from cmkdtool.extract.sources import assign_splits
    from cmkdtool.extract.text import TextExtractor, make_encoder
    from cmkdtool.pipelines.extract import read_text_source

    src = read_text_source(kw["source"], kw["path_column"])
    enc = make_encoder(
        kw["encoder"],
        dim=kw["dim"],
        ngrams=kw["ngrams"],
        tfidf=kw["tfidf"],
        sublinear=kw["sublinear"],
        device=kw["device"],
        batch_size=kw["batch_size"],
        allow_download=kw["allow_download"],
    )
    extractor = TextExtractor(enc)
    if kw["tfidf"] and kw["encoder"] == "hashing":  # document frequencies from the train split only
        ratio, seed = split_rule(kw["split_ratio"], kw["split_seed"])
        assign_splits(src.items, ratio, seed)
        texts = []
        for it in (it for it in src.items if it.split == "train"):
            try:
                texts.append(extractor.load(it))
            except CmkdError:  # unreadable: reported (or fatal with --on-error fail) by the extraction itself
                pass
        enc.fit(texts)
    _run("text", kw, extractor, source=src)


_command(
    "text",
    _text,
    TEXT_PARAMS,
    "Texts -> hashed bag-of-words / TF-IDF vectors (L2-normalised) or sentence-transformers embeddings.",
)


# ------------------------------------------------------------------------------------------------ array


ARRAY_PARAMS = [
    o.param("source", Annotated[str, typer.Argument(help="Features: .npy, .npz, .csv/.tsv or .safetensors (N rows).")]),
    o.param("output", OutOpt),
    o.param(
        "key",
        Annotated[
            str | None,
            typer.Option("--key", help="Array to take from .npz/.safetensors [default: the only float one]."),
        ],
        None,
    ),
    o.param(
        "meta",
        Annotated[
            str | None,
            typer.Option(
                "--meta", help="Sidecar CSV/Parquet with id, label or labels, split: in the same row order, or by id."
            ),
        ],
        None,
    ),
    o.param("name", NameOpt, None),
    o.param("split_ratio", SplitRatioOpt, "0.8,0.1,0.1", check=parse_split_ratio),
    o.param("split_seed", SplitSeedOpt, 0),
    o.param("quiet", QuietOpt, False),
]


def _array(kw: dict) -> None:
    from cmkdtool.pipelines.extract import run_extract_array

    source, output, meta = kw["source"], kw["output"], kw["meta"]
    check_output(output, source, *([meta] if meta else []))
    table = run_extract_array(
        source, key=kw["key"], meta=meta, name=kw["name"], split_ratio=kw["split_ratio"], split_seed=kw["split_seed"]
    )
    table.write(output)
    note(f"wrote {output}: {table.rows} rows, column '{table.column}' of shape {table.shape}", kw["quiet"])


_command(
    "array",
    _array,
    ARRAY_PARAMS,
    """Arrays you already computed (embeddings, spectrograms) -> a feature table, keeping the sample shape.

    Ids, labels and splits come from the file itself (.npz arrays id/label/labels/split, CSV columns) or from
    --meta; without ids the row numbers are the ids.""",
)
