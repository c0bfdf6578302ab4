"""``extract video``: clips -> a torchvision video backbone's pooled embedding, or per-frame image features
pooled over time.

A clip is a folder of frame images (sorted in natural order: ``frame2.png`` before ``frame10.png``) or a video
file (decoded with torchcodec when it is installed). ``--frames T`` frames are sampled uniformly over the clip
(frame ``round(i * (n - 1) / (T - 1))`` for i = 0..T-1; a clip shorter than T repeats frames). Each frame is
preprocessed as ``extract image`` does (resize, center crop, scale, normalise; the weights' own settings by
default: 128x171 resized, 112 crop and Kinetics-400 mean/std for the video models).

- Video backbones (``r2plus1d_18``, ``r3d_18``, ``mc3_18``, ``s3d``, ``mvit_v2_s``, ...; AMID's student is
  R(2+1)D-18) see the clip as [C, T, H, W]; their layer output is pooled over time and space.
- Image backbones (``resnet18``, ...) see each frame; the per-frame features are pooled over time with
  ``--temporal-pool mean|max``, or kept as a [T, F] sequence (``none``, e.g. for ``--arch gru``).
"""

from __future__ import annotations

import re
from pathlib import Path

from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.extract.image import IMAGE_EXTS, ImagePrep

VIDEO_EXTS = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")
TEMPORAL_POOLS = ("mean", "max", "none")


def _natural_key(path: Path):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", path.name)]


def sample_indices(n: int, frames: int) -> list[int]:
    """``frames`` indices spread uniformly over ``n`` frames (first and last included)."""
    if frames == 1:
        return [(n - 1) // 2]
    return [round(i * (n - 1) / (frames - 1)) for i in range(frames)]


def read_clip(path: str, frames: int, prep: ImagePrep):
    """uint8 frames [T, C, H, W] of a frames folder or a video file (decoded to prep.mode)."""
    import torch

    p = Path(path)
    if p.is_dir():
        files = sorted((f for f in p.iterdir() if f.suffix.lower() in IMAGE_EXTS), key=_natural_key)
        if not files:
            raise CmkdError("no frame images in the clip folder")
        picked = [files[i] for i in sample_indices(len(files), frames)]
        return torch.stack([prep.decode(str(f)) for f in picked])
    try:
        from torchcodec.decoders import VideoDecoder
    except ImportError:
        raise CmkdError(
            "video files need torchcodec and FFmpeg (pip install torchcodec); or give folders of frames"
        ) from None
    decoder = VideoDecoder(str(p))
    n = decoder.metadata.num_frames or len(decoder)
    data = decoder.get_frames_at(indices=sample_indices(int(n), frames)).data  # [T, C, H, W] uint8 RGB
    if prep.mode == "gray":
        from torchvision.transforms.v2.functional import rgb_to_grayscale

        data = rgb_to_grayscale(data)
    return data


class VideoExtractor:
    shape_hint = "pass --resize and --crop so that every frame gets the same size"

    def __init__(self, prep: ImagePrep, frames: int, features, record: dict, video_model: bool, temporal_pool: str):
        if frames < 1:
            raise CmkdUsageError("--frames must be at least 1")
        if temporal_pool not in TEMPORAL_POOLS:
            raise CmkdUsageError(f"unknown --temporal-pool '{temporal_pool}'; choose mean, max or none")
        self.prep = prep
        self.frames = frames
        self.features = features
        self.record = record
        self.video_model = video_model
        self.temporal_pool = temporal_pool

    def load(self, item):
        import torch

        clip = read_clip(item.path, self.frames, self.prep)
        x = torch.stack([self.prep(f) for f in clip])  # [T, C, H, W]
        return x.permute(1, 0, 2, 3).contiguous() if self.video_model else x

    def setup(self, device, precision: str) -> None:
        self.features.model.to(device)

    def encode(self, x):
        if self.video_model:
            return self.features(x)
        b, t = x.shape[:2]
        f = self.features(x.flatten(0, 1)).reshape(b, t, -1)
        if self.temporal_pool == "none":
            return f
        return f.mean(dim=1) if self.temporal_pool == "mean" else f.amax(dim=1)

    def settings(self) -> dict:
        out = {"kind": "video", "frames": self.frames, "preprocess": self.prep.settings()}
        out.update(self.record, layer=self.features.describe(), pool=self.features.pool)
        if not self.video_model:
            out["temporal_pool"] = self.temporal_pool
        return out
