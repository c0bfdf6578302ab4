"""``extract image``: decode PNG/JPEG (torchvision.io), resize, center-crop, normalise; then a torchvision
backbone's features (see backbones.py) or, with ``--raw``, the preprocessed pixels with their shape [C, H, W].

Preprocessing, in this order (torchvision's ImageClassification transform):
1. decode to RGB (3 channels) or gray (1 channel; ``--mode gray``, raw only); an animated GIF gives its first
   frame;
2. ``--resize S`` scales the shorter side to S pixels (``H,W``: exactly that size), bilinear with antialias;
3. ``--crop S`` (or ``H,W``) takes the center crop;
4. scale to [0, 1] (8-bit: / 255; 16-bit PNGs: / 65535, before resizing), then ``(x - mean) / std`` per
   channel when ``--mean``/``--std`` are given.
With a backbone, resize/crop/mean/std default to its weights' own preprocessing (ImageNet's 256/224 and
mean/std without weights); with ``--raw`` nothing is resized and no mean/std is applied unless asked (every
model cmkdtool trains standardises its inputs itself).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cmkdtool.errors import CmkdUsageError

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".gif")
MODES = ("rgb", "gray")


@dataclass
class ImagePrep:
    """uint8 [C, H, W] -> float [C, h, w], see the module docstring."""

    mode: str = "rgb"
    resize: list[int] | None = None
    crop: list[int] | None = None
    mean: list[float] | None = None
    std: list[float] | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise CmkdUsageError(f"unknown --mode '{self.mode}'; choose rgb or gray")
        channels = 3 if self.mode == "rgb" else 1
        for name, v in (("--mean", self.mean), ("--std", self.std)):
            if v is not None and len(v) not in (1, channels):
                raise CmkdUsageError(f"{name} needs 1 or {channels} numbers for --mode {self.mode}; got {len(v)}")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise CmkdUsageError("--std values must be positive")
        for name, v in (("--resize", self.resize), ("--crop", self.crop)):
            if v is not None and (len(v) not in (1, 2) or any(s < 1 for s in v)):
                raise CmkdUsageError(f"{name} takes one size S or H,W in pixels (positive)")
        if (self.mean is None) != (self.std is None):
            raise CmkdUsageError("give both --mean and --std, or neither")

    def decode(self, path: str):
        """[C, H, W] uint8 (or uint16 for 16-bit PNGs); the first frame of an animated GIF."""
        import torchvision.io as tio

        mode = tio.ImageReadMode.RGB if self.mode == "rgb" else tio.ImageReadMode.GRAY
        img = tio.decode_image(tio.read_file(path), mode=mode)
        img = img[0] if img.ndim == 4 else img
        channels = 3 if self.mode == "rgb" else 1
        if img.shape[0] != channels:  # GIF decoding ignores the mode
            from torchvision.transforms import functional as F

            img = F.rgb_to_grayscale(img[:3]) if channels == 1 else img[:1].expand(3, -1, -1)
        return img

    def __call__(self, img):
        import torch
        from torchvision.transforms import functional as F

        if img.dtype != torch.uint8:  # 16-bit: scale to [0, 1] first, then resize in float
            img = img.to(torch.float32) / float(torch.iinfo(img.dtype).max)
        if self.resize is not None:
            img = F.resize(img, list(self.resize), antialias=True)
        if self.crop is not None:
            img = F.center_crop(img, list(self.crop))
        x = img.to(torch.float32).div_(255.0) if img.dtype == torch.uint8 else img
        if self.mean is not None:
            x = F.normalize(x, list(self.mean), list(self.std))
        return x

    def settings(self) -> dict:
        return asdict(self)


class ImageExtractor:
    """Pixels (``backbone=None``: raw) or a backbone layer's pooled features of each image."""

    shape_hint = "pass --resize and --crop so that every image gets the same size"

    def __init__(self, prep: ImagePrep, features=None, record: dict | None = None) -> None:
        self.prep = prep
        self.features = features  # backbones.LayerFeatures or None
        self.record = record or {}

    @property
    def stores_samples(self) -> bool:
        return self.features is None

    def load(self, item):
        return self.prep(self.prep.decode(item.path))

    def setup(self, device, precision: str) -> None:
        if self.features is not None:
            self.features.model.to(device)

    def encode(self, x):
        return x if self.features is None else self.features(x)

    def settings(self) -> dict:
        out = {"kind": "image", "preprocess": self.prep.settings()}
        if self.features is not None:
            out.update(self.record, layer=self.features.describe(), pool=self.features.pool)
        else:
            out["raw"] = True
        return out
