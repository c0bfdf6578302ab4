"""extract image|audio|video: real media files written by the tests, decoded values, joins, resume, errors,
and backbone features against torchvision called directly."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
import torchaudio
import torchvision
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

from cmkdtool.cli.app import app
from cmkdtool.io.tables import read_tables

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def run(*args):
    result = invoke(*args)
    assert result.exit_code == 0, result.output
    return result


def meta_of(path) -> dict:
    return json.loads(pq.read_schema(path).metadata[b"cmkdtool"])


def column(path, name) -> dict[str, np.ndarray]:
    """id -> sample (reshaped to the column's shape)."""
    t = pq.read_table(path)
    f = t.schema.field(name)
    shape = json.loads(f.metadata[b"shape"]) if f.metadata and b"shape" in f.metadata else [f.type.list_size]
    values = np.asarray(t.column(name).combine_chunks().flatten()).reshape(t.num_rows, *shape)
    return dict(zip(t.column("id").to_pylist(), values, strict=True))


def tone(freq: float, rate: int, seconds: float = 0.5, amp: float = 0.5) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    return (amp * np.sin(2 * np.pi * freq * t)).astype(np.float32)


@pytest.fixture()
def images(tmp_path):
    """Two classes of 3 PNG images (12x10 RGB) plus one JPEG; returns the folder and the pixels written."""
    rng = np.random.default_rng(0)
    root = tmp_path / "img"
    pixels = {}
    for c in ("cat", "dog"):
        (root / c).mkdir(parents=True)
        for i in range(3):
            a = (rng.random((10, 12, 3)) * 255).astype(np.uint8)
            Image.fromarray(a).save(root / c / f"{i:02d}.png")
            pixels[f"{c}/{i:02d}"] = a
    Image.fromarray((rng.random((10, 12, 3)) * 255).astype(np.uint8)).save(root / "dog" / "jp.jpg", quality=95)
    return root, pixels


# ---------------------------------------------------------------------------------------------- image


def test_raw_png_pixels_shapes_labels_and_splits(images, tmp_path):
    root, pixels = images
    out = tmp_path / "img.parquet"
    run("extract", "image", root, "--raw", "-o", out, "-q")
    values = column(out, "image")
    assert set(values) == {*pixels, "dog/jp"}
    for i, a in pixels.items():  # [C, H, W] scaled to [0, 1], exactly the PNG's bytes
        np.testing.assert_allclose(values[i], a.transpose(2, 0, 1) / 255.0, atol=1e-7)
    assert values["dog/jp"].shape == (3, 10, 12)
    t = pq.read_table(out)
    labels = dict(zip(t.column("id").to_pylist(), t.column("label").to_pylist(), strict=True))
    assert labels == {i: int(i.startswith("dog")) for i in values}
    assert meta_of(out)["class_names"] == ["cat", "dog"]
    # the split is the id hash every command uses for tables without one
    from cmkdtool.io.tables import hash_split

    ids = t.column("id").to_pylist()
    assert t.column("split").to_pylist() == list(hash_split(ids, (0.8, 0.1, 0.1), 0))


def test_gray_resize_crop_and_normalise(images, tmp_path):
    root, pixels = images
    out = tmp_path / "g.parquet"
    run("extract", "image", root, "--raw", "--mode", "gray", "--resize", "8", "--crop", "6", "--mean", "0.5",
        "--std", "0.25", "-o", out, "-q")  # fmt: skip
    values = column(out, "image")
    assert values["cat/00"].shape == (1, 6, 6)
    from torchvision.transforms import functional as F

    img = torchvision.io.decode_image(str(root / "cat" / "00.png"), mode=torchvision.io.ImageReadMode.GRAY)
    want = (F.center_crop(F.resize(img, [8], antialias=True), [6]).float() / 255 - 0.5) / 0.25
    np.testing.assert_allclose(values["cat/00"], want.numpy(), atol=1e-6)


def test_corrupt_image_is_reported_and_skipped(images, tmp_path):
    root, pixels = images
    (root / "cat" / "broken.png").write_bytes(b"\x89PNG not really")
    out = tmp_path / "c.parquet"
    result = run("extract", "image", root, "--raw", "--workers", "1", "-o", out, "-q")
    assert "skipped 1 unreadable" in result.stderr and "broken.png" in result.stderr
    assert "cat/broken" not in column(out, "image") and len(column(out, "image")) == 7
    errors = meta_of(out)["extract"]["errors"]
    assert errors["count"] == 1 and errors["first"][0]["id"] == "cat/broken"
    fail = invoke("extract", "image", root, "--raw", "--on-error", "fail", "-o", tmp_path / "f.parquet", "-q")
    assert fail.exit_code == 1 and "broken.png" in fail.stderr and "--on-error skip" in fail.stderr
    assert not (tmp_path / "f.parquet").exists()


def test_images_of_different_sizes_need_resize(images, tmp_path):
    root, _ = images
    Image.fromarray(np.zeros((5, 5, 3), np.uint8)).save(root / "cat" / "small.png")
    result = invoke("extract", "image", root, "--raw", "--on-error", "fail", "-o", tmp_path / "x.parquet", "-q")
    assert result.exit_code == 1 and "--resize" in result.stderr and "small.png" in result.stderr
    # batches of one are stacked in the worker; a later batch of another size is still caught
    result = run("extract", "image", root, "--raw", "--batch-size", "1", "-o", tmp_path / "z.parquet", "-q")
    assert "cat/small.png: preprocessed to shape [3, 5, 5], earlier samples to [3, 10, 12]" in result.stderr
    assert len(column(tmp_path / "z.parquet", "image")) == 7
    run("extract", "image", root, "--raw", "--resize", "6,6", "-o", tmp_path / "y.parquet", "-q")
    assert column(tmp_path / "y.parquet", "image")["cat/small"].shape == (3, 6, 6)


def _resnet18_reference(state: dict, files, size: int) -> np.ndarray:
    """What a user gets calling torchvision directly: ImageNet preprocessing, fc removed."""
    from torchvision.transforms import functional as F

    model = torchvision.models.resnet18()
    model.load_state_dict(state)
    model.fc = torch.nn.Identity()
    model.eval()
    batch = []
    for f in files:
        img = torchvision.io.decode_image(str(f), mode=torchvision.io.ImageReadMode.RGB)
        x = F.center_crop(F.resize(img, [size], antialias=True), [size]).float() / 255
        batch.append(F.normalize(x, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]))
    with torch.no_grad():
        return model(torch.stack(batch)).numpy()


@pytest.mark.parametrize("fmt", ["safetensors", "pth"])
def test_backbone_checkpoint_matches_torchvision(images, tmp_path, fmt):
    root, _ = images
    torch.manual_seed(0)
    state = torchvision.models.resnet18().state_dict()
    ckpt = tmp_path / f"r18.{fmt}"
    if fmt == "safetensors":
        save_file(state, ckpt)
    else:
        torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}}, ckpt)
    out = tmp_path / "f.parquet"
    run("extract", "image", root, "--backbone", "resnet18", "--checkpoint", ckpt, "--resize", "32", "--crop", "32",
        "-o", out, "-q")  # fmt: skip
    values = column(out, "image")
    ids = sorted(values)
    want = _resnet18_reference(state, [root / f"{i}.png" if i != "dog/jp" else root / "dog/jp.jpg" for i in ids], 32)
    got = np.stack([values[i] for i in ids])
    assert got.shape == (7, 512)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)
    rec = meta_of(out)["extract"]["settings"]
    assert rec["backbone"] == "resnet18" and rec["layer"] == "input of fc" and len(rec["checkpoint_sha256"]) == 64


def test_backbone_named_layer_and_pooling(images, tmp_path):
    root, _ = images
    torch.manual_seed(0)
    model = torchvision.models.resnet18().eval()
    save_file(model.state_dict(), tmp_path / "r.safetensors")
    common = ["--backbone", "resnet18", "--checkpoint", tmp_path / "r.safetensors", "--resize", "32", "--crop", "32"]
    run("extract", "image", root, *common, "--layer", "layer3", "--pool", "none", "-o", tmp_path / "m.parquet", "-q")
    run("extract", "image", root, *common, "--layer", "layer3", "--pool", "max", "-o", tmp_path / "x.parquet", "-q")
    maps = column(tmp_path / "m.parquet", "image")
    assert maps["cat/00"].shape == (256, 2, 2)
    np.testing.assert_allclose(column(tmp_path / "x.parquet", "image")["cat/00"], maps["cat/00"].max(axis=(1, 2)))
    bad = invoke("extract", "image", root, *common, "--layer", "layer9", "-o", tmp_path / "b.parquet", "-q")
    assert bad.exit_code == 2 and "layer9" in bad.stderr and "layer4" in bad.stderr


def test_weights_from_the_hub_cache_or_a_clear_error(images, tmp_path, monkeypatch):
    import urllib.error

    root, _ = images
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    result = invoke("extract", "image", root, "--backbone", "resnet18", "--weights", "IMAGENET1K_V1",
                    "-o", tmp_path / "w.parquet", "-q")  # fmt: skip
    assert result.exit_code == 1
    assert "resnet18-f37072fd.pth" in result.stderr and "--checkpoint" in result.stderr
    assert result.stderr.count("\n") == 1
    # the same weights placed in the cache are used (no download), with their own preprocessing (256 -> 224)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(1)
    state = torchvision.models.resnet18().state_dict()
    torch.save(state, cache / "resnet18-f37072fd.pth")
    out = tmp_path / "w.parquet"
    run("extract", "image", root, "--backbone", "resnet18", "--weights", "IMAGENET1K_V1", "-o", out, "-q")
    got = column(out, "image")["cat/00"]
    assert meta_of(out)["extract"]["settings"]["weights"] == "ResNet18_Weights.IMAGENET1K_V1"
    # reference with the weights' transform (resize 256, crop 224)
    model = torchvision.models.resnet18()
    model.load_state_dict(state)
    model.fc = torch.nn.Identity()
    tf = torchvision.models.ResNet18_Weights.IMAGENET1K_V1.transforms()
    img = torchvision.io.decode_image(str(root / "cat" / "00.png"), mode=torchvision.io.ImageReadMode.RGB)
    with torch.no_grad():
        want = model.eval()(tf(img).unsqueeze(0))[0].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_unknown_backbone_and_weights_names(images, tmp_path):
    root, _ = images
    r = invoke("extract", "image", root, "--backbone", "resnet81", "--weights", "DEFAULT", "-o", tmp_path / "o.parquet")
    assert r.exit_code == 2 and "resnet18" in r.stderr
    r = invoke(
        "extract", "image", root, "--backbone", "resnet18", "--weights", "IMAGENET9", "-o", tmp_path / "o.parquet"
    )
    assert r.exit_code == 2 and "IMAGENET1K_V1" in r.stderr
    r = invoke("extract", "image", root, "--backbone", "resnet18", "-o", tmp_path / "o.parquet")
    assert r.exit_code == 2 and "--checkpoint" in r.stderr
    pickle = tmp_path / "evil.pth"
    import pickle as pk

    pickle.write_bytes(pk.dumps({"fc.weight": object()}))
    r = invoke("extract", "image", root, "--backbone", "resnet18", "--checkpoint", pickle, "-o", tmp_path / "o.parquet")
    assert r.exit_code == 1 and "weights-only" in r.stderr


# ---------------------------------------------------------------------------------------------- audio


@pytest.fixture()
def sounds(tmp_path):
    """Tones at 16 kHz and 22.05 kHz in two class folders; the same stems as a second modality would use."""
    root = tmp_path / "aud"
    freqs = {"low/00": 500.0, "low/01": 750.0, "high/00": 3000.0, "high/01": 2500.0}
    for i, (sid, f) in enumerate(freqs.items()):
        rate = 16000 if i % 2 == 0 else 22050
        (root / sid).parent.mkdir(parents=True, exist_ok=True)
        stereo = np.stack([tone(f, rate), tone(f, rate)], axis=1)
        sf.write(root / f"{sid}.wav", stereo, rate, subtype="PCM_16")
    return root, freqs


def test_spectrogram_peak_at_the_tone_frequency(sounds, tmp_path):
    root, freqs = sounds
    out = tmp_path / "s.parquet"
    run("extract", "audio", root, "--features", "spectrogram", "--pool", "none", "--duration", "0.5", "-o", out, "-q")
    values = column(out, "audio")
    for sid, f in freqs.items():
        spec = values[sid]
        assert spec.shape == (1, 201, 51)  # n_fft 400 -> 201 bins; 8000 samples / hop 160 + 1 frames
        peak = spec[0].mean(axis=1).argmax()
        assert peak == round(f / (16000 / 400)), (sid, peak)


def test_mfcc_and_logmel_equal_torchaudio_direct(sounds, tmp_path):
    root, freqs = sounds
    run("extract", "audio", root, "--features", "mfcc", "--pool", "none", "--duration", "0.5",
        "-o", tmp_path / "m.parquet", "-q")  # fmt: skip
    run("extract", "audio", root, "--features", "logmel", "--n-mels", "40", "--pool", "mean+std",
        "-o", tmp_path / "l.parquet", "-q")  # fmt: skip
    mfcc = column(tmp_path / "m.parquet", "audio")
    logmel = column(tmp_path / "l.parquet", "audio")
    for sid in freqs:
        data, rate = sf.read(root / f"{sid}.wav", dtype="float32", always_2d=True)
        wave = torch.from_numpy(data).mean(1)
        if rate != 16000:
            wave = torchaudio.functional.resample(wave, rate, 16000)
        wave = wave[:8000]
        mel = {"n_fft": 400, "hop_length": 160, "n_mels": 64}
        want = torchaudio.transforms.MFCC(16000, n_mfcc=40, melkwargs=mel)(wave)
        np.testing.assert_allclose(mfcc[sid][0], want.numpy(), rtol=1e-4, atol=1e-3)
        ms = torchaudio.transforms.MelSpectrogram(16000, n_fft=400, hop_length=160, n_mels=40)(wave)
        db = 10 * torch.log10(ms.clamp_min(1e-10))
        want = torch.cat([db.mean(-1), db.std(-1, correction=0)]).numpy()
        np.testing.assert_allclose(logmel[sid], want, rtol=1e-4, atol=1e-3)
    # the high tones put their mel energy in higher bands than the low tones
    assert logmel["high/00"][:40].argmax() > logmel["low/00"][:40].argmax()


def test_tables_of_two_modalities_join_by_id(sounds, tmp_path):
    root, freqs = sounds
    img = tmp_path / "img"
    for sid in freqs:
        (img / sid).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((4, 4), 200 if sid.startswith("high") else 50, np.uint8)).save(img / f"{sid}.png")
    run("extract", "audio", root, "-o", tmp_path / "a.parquet", "-q")
    run("extract", "image", img, "--raw", "--mode", "gray", "-o", tmp_path / "i.parquet", "-q")
    t = read_tables([str(tmp_path / "a.parquet"), str(tmp_path / "i.parquet")])
    assert t.num_rows == 4 and not t.notes
    assert set(t.modality_columns()) == {"audio", "image"}
    assert t.shape("audio") == (80,) and t.shape("image") == (1, 4, 4)


def test_manifest_with_names_splits_and_relative_paths(sounds, tmp_path):
    root, freqs = sounds
    rows = ["id,path,label,split"]
    for i, sid in enumerate(freqs):
        rows.append(f"s{i},aud/{sid}.wav,{sid.split('/')[0]},{'test' if i == 0 else 'train'}")
    (tmp_path / "m.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "a.parquet"
    run("extract", "audio", tmp_path / "m.csv", "--pool", "mean", "--name", "sound", "-o", out, "-q")
    t = pq.read_table(out)
    assert t.column("id").to_pylist() == ["s0", "s1", "s2", "s3"]
    assert meta_of(out)["class_names"] == ["high", "low"]
    assert t.column("label").to_pylist() == [1, 1, 0, 0]
    assert t.column("split").to_pylist() == ["test", "train", "train", "train"]
    assert t.schema.field("sound").type.list_size == 40


def test_variable_lengths_need_duration_for_maps(tmp_path):
    root = tmp_path / "a" / "x"
    root.mkdir(parents=True)
    sf.write(root / "short.wav", tone(440, 16000, 0.3), 16000)
    sf.write(root / "long.wav", tone(440, 16000, 0.6), 16000)
    r = invoke("extract", "audio", tmp_path / "a", "--pool", "none", "--on-error", "fail", "-o", tmp_path / "o.parquet")
    assert r.exit_code == 1 and "--duration" in r.stderr
    run("extract", "audio", tmp_path / "a", "--pool", "none", "--duration", "0.4", "-o", tmp_path / "o.parquet", "-q")
    v = column(tmp_path / "o.parquet", "audio")
    assert v["x/short"].shape == v["x/long"].shape == (1, 40, 41)


# ---------------------------------------------------------------------------------------------- resume


def test_resume_after_interruption_writes_each_id_once(images, tmp_path, monkeypatch):
    from cmkdtool.extract import image as image_mod

    root, pixels = images
    for k in range(10):  # more rows than one chunk
        Image.fromarray(np.full((10, 12, 3), k * 20, np.uint8)).save(root / "cat" / f"x{k}.png")
    clean = tmp_path / "clean.parquet"
    run("extract", "image", root, "--raw", "-o", clean, "-q")
    out = tmp_path / "out.parquet"
    real_load = image_mod.ImageExtractor.load
    calls = {"n": 0}

    def flaky(self, item):
        calls["n"] += 1
        if calls["n"] == 11:
            raise KeyboardInterrupt
        return real_load(self, item)

    monkeypatch.setattr(image_mod.ImageExtractor, "load", flaky)
    args = ["extract", "image", root, "--raw", "--batch-size", "2", "--chunk-rows", "4", "--workers", "0", "-o", out]
    r = invoke(*args, "-q")
    assert r.exit_code == 130 and not out.exists()
    parts = sorted((tmp_path / "out.parquet.partial").glob("part-*.parquet"))
    assert len(parts) == 3  # 10 rows loaded, 10 written in parts of 4, 4 and 2
    again = invoke(*args, "-q")
    assert again.exit_code == 1 and "--resume" in again.stderr
    monkeypatch.setattr(image_mod.ImageExtractor, "load", real_load)
    done = run(*args, "--resume")
    assert "10 already there" in done.stderr
    ids = pq.read_table(out).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 17
    want, got = column(clean, "image"), column(out, "image")
    assert list(got) == list(want)  # the same order as an uninterrupted run
    for i in want:
        np.testing.assert_array_equal(got[i], want[i])
    assert not (tmp_path / "out.parquet.partial").exists()
    # resuming into a finished table appends only new files; other settings are refused
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "dog" / "new.png")
    more = run(*args, "--resume")
    assert "17 already there" in more.stderr and len(column(out, "image")) == 18
    other = invoke("extract", "image", root, "--raw", "--mode", "gray", "-o", out, "--resume", "-q")
    assert other.exit_code == 1 and "other settings" in other.stderr


# ---------------------------------------------------------------------------------------------- video


def test_video_frames_folders_with_video_and_image_backbones(tmp_path):
    rng = np.random.default_rng(0)
    root = tmp_path / "vid"
    for c in ("a", "b"):
        for k in range(2):
            clip = root / c / f"clip{k}"
            clip.mkdir(parents=True)
            for f in range(11):  # frame2 sorts before frame10 (natural order)
                Image.fromarray((rng.random((20, 24, 3)) * 255).astype(np.uint8)).save(clip / f"frame{f}.png")
    torch.manual_seed(0)
    r3d = torchvision.models.video.r3d_18().eval()
    save_file(r3d.state_dict(), tmp_path / "r3d.safetensors")
    out = tmp_path / "v.parquet"
    run("extract", "video", root, "--backbone", "r3d_18", "--checkpoint", tmp_path / "r3d.safetensors",
        "--frames", "4", "--resize", "32", "--crop", "32", "-o", out, "-q")  # fmt: skip
    got = column(out, "video")
    assert sorted(got) == ["a/clip0", "a/clip1", "b/clip0", "b/clip1"]
    from torchvision.transforms import functional as F

    frames = []
    for f in (0, 3, 7, 10):  # round(i * 10 / 3)
        img = torchvision.io.decode_image(str(root / "a" / "clip1" / f"frame{f}.png"))
        x = F.center_crop(F.resize(img, [32], antialias=True), [32]).float() / 255
        frames.append(F.normalize(x, [0.43216, 0.394666, 0.37645], [0.22803, 0.22145, 0.216989]))
    r3d.fc = torch.nn.Identity()
    with torch.no_grad():
        want = r3d(torch.stack(frames, dim=1).unsqueeze(0))[0].numpy()
    np.testing.assert_allclose(got["a/clip1"], want, rtol=1e-4, atol=1e-5)
    # an image backbone per frame, kept as a [T, F] sequence
    torch.manual_seed(0)
    save_file(torchvision.models.resnet18().state_dict(), tmp_path / "r18.safetensors")
    out2 = tmp_path / "v2.parquet"
    run("extract", "video", root, "--backbone", "resnet18", "--checkpoint", tmp_path / "r18.safetensors",
        "--frames", "3", "--resize", "32", "--crop", "32", "--temporal-pool", "none", "-o", out2, "-q")  # fmt: skip
    assert column(out2, "video")["b/clip0"].shape == (3, 512)
    assert math.isclose(meta_of(out2)["extract"]["settings"]["frames"], 3)


# ---------------------------------------------------------------------------------------------- text, array


def test_text_lines_folders_and_manifests(tmp_path):
    (tmp_path / "lines.txt").write_text("the cat sat\n\nthe dog ran\n")
    run("extract", "text", tmp_path / "lines.txt", "--dim", "32", "-o", tmp_path / "l.parquet", "-q")
    v = column(tmp_path / "l.parquet", "text")
    assert list(v) == ["line-000001", "line-000003"]  # blank lines keep their number
    assert all(np.isclose(np.linalg.norm(x), 1.0) for x in v.values())
    for c, words in (("pos", ["good fine", "great good"]), ("neg", ["bad", "awful bad"])):
        (tmp_path / "t" / c).mkdir(parents=True)
        for i, w in enumerate(words):
            (tmp_path / "t" / c / f"{i}.txt").write_text(w)
    run("extract", "text", tmp_path / "t", "--tfidf", "--name", "words", "-o", tmp_path / "t.parquet", "-q")
    t = pq.read_table(tmp_path / "t.parquet")
    assert t.column("id").to_pylist() == ["neg/0", "neg/1", "pos/0", "pos/1"]
    assert meta_of(tmp_path / "t.parquet")["class_names"] == ["neg", "pos"]
    settings = meta_of(tmp_path / "t.parquet")["extract"]["settings"]
    assert settings["tfidf"] is True and settings["n_docs"] == list(t.column("split").to_pylist()).count("train")
    (tmp_path / "m.csv").write_text('id,text,label\na,"hello world",x\nb,"hello there",y\n')
    run("extract", "text", tmp_path / "m.csv", "--dim", "8", "-o", tmp_path / "m.parquet", "-q")
    assert pq.read_table(tmp_path / "m.parquet").column("label").to_pylist() == [0, 1]


def test_array_npz_with_sidecar_trains(tmp_path):
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    x = rng.standard_normal((300, 2, 4)).astype(np.float32)
    x[np.arange(300), 0, y] += 3.0  # the class is readable from the features
    np.save(tmp_path / "x.npy", x)
    ids = [f"clip{i:03d}" for i in range(300)]
    (tmp_path / "meta.csv").write_text("id,label\n" + "".join(f"{i},{'abc'[k]}\n" for i, k in zip(ids, y, strict=True)))
    out = tmp_path / "a.parquet"
    run("extract", "array", tmp_path / "x.npy", "--meta", tmp_path / "meta.csv", "--name", "emb", "-o", out, "-q")
    np.testing.assert_array_equal(np.stack(list(column(out, "emb").values())), x)
    assert meta_of(out)["class_names"] == ["a", "b", "c"]
    run("pretrain", out, "--input", "emb", "--epochs", "30", "-o", tmp_path / "m.safetensors", "-q")
    acc = json.loads(run("eval", tmp_path / "m.safetensors", out, "--format", "json", "--no-retrieval").stdout)
    assert acc["accuracy"] > 0.8
    bad = invoke("extract", "array", tmp_path / "x.npy", "--meta", tmp_path / "nope.csv", "-o", out)
    assert bad.exit_code == 1 and "nope.csv" in bad.stderr


# ---------------------------------------------------------------------------------------------- review fixes


def test_resume_refuses_other_classes_or_split_rule(images, tmp_path):
    root, _ = images
    out = tmp_path / "r.parquet"
    run("extract", "image", root, "--raw", "-o", out, "-q")
    (root / "ant").mkdir()
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "ant" / "9.png")
    r = invoke("extract", "image", root, "--raw", "-o", out, "--resume", "-q")
    assert r.exit_code == 1 and "class_names" in r.stderr  # old labels would mean other classes
    (root / "ant" / "9.png").unlink()
    (root / "ant").rmdir()
    r = invoke("extract", "image", root, "--raw", "-o", out, "--resume", "--split-ratio", "0,0,1", "-q")
    assert r.exit_code == 1 and "split_rule" in r.stderr
    r = invoke("extract", "image", root, "--raw", "--resize", "5", "-o", out, "--resume", "-q")
    assert r.exit_code == 1 and "settings.preprocess" in r.stderr


def test_a_crash_between_rename_and_cleanup_does_not_duplicate_rows(images, tmp_path, monkeypatch):
    from cmkdtool.extract import writer as writer_mod

    root, _ = images
    out = tmp_path / "d.parquet"
    monkeypatch.setattr(writer_mod.shutil, "rmtree", lambda *a, **k: None)  # killed right after the rename
    run("extract", "image", root, "--raw", "--chunk-rows", "3", "-o", out, "-q")
    assert (tmp_path / "d.parquet.partial").is_dir()
    monkeypatch.undo()
    run("extract", "image", root, "--raw", "--chunk-rows", "3", "-o", out, "--resume", "-q")
    ids = pq.read_table(out).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == 7 and not (tmp_path / "d.parquet.partial").exists()


def test_a_new_file_of_another_size_is_skipped_when_resuming(images, tmp_path):
    root, _ = images
    out = tmp_path / "o.parquet"
    run("extract", "image", root, "--raw", "-o", out, "-q")
    Image.fromarray(np.zeros((30, 30, 3), np.uint8)).save(root / "cat" / "big.png")
    Image.fromarray(np.zeros((10, 12, 3), np.uint8)).save(root / "cat" / "ok.png")
    r = run("extract", "image", root, "--raw", "-o", out, "--resume", "-q")
    assert "big.png" in r.stderr and "[3, 10, 12]" in r.stderr
    assert set(column(out, "image")) >= {"cat/ok"} and "cat/big" not in column(out, "image")


def test_16_bit_png_and_animated_gif(tmp_path):
    root = tmp_path / "x" / "a"
    root.mkdir(parents=True)
    a16 = np.array([[0, 65535], [32768, 65535]], np.uint16)
    Image.fromarray(a16).save(root / "deep.png")
    frames = [Image.fromarray(np.full((2, 2, 3), v, np.uint8)) for v in (255, 0)]
    frames[0].save(root / "anim.gif", save_all=True, append_images=frames[1:])
    run("extract", "image", tmp_path / "x", "--raw", "--mode", "gray", "-o", tmp_path / "o.parquet", "-q")
    v = column(tmp_path / "o.parquet", "image")
    np.testing.assert_allclose(v["a/deep"][0], a16 / 65535, atol=1e-6)
    np.testing.assert_allclose(v["a/anim"], 1.0, atol=1 / 255)  # the first (white) frame, in gray


def test_failures_before_any_row_leave_nothing_behind(images, tmp_path):
    root, _ = images
    out = tmp_path / "dev.parquet"
    if not torch.cuda.is_available():
        r = invoke("extract", "image", root, "--raw", "-o", out, "--device", "cuda", "-q")
        assert r.exit_code == 1 and "CUDA" in r.stderr
        assert not (tmp_path / "dev.parquet.partial").exists()
    bad = tmp_path / "bad" / "a"
    bad.mkdir(parents=True)
    (bad / "1.png").write_text("x")
    r = invoke("extract", "image", tmp_path / "bad", "--raw", "-o", out, "-q")
    assert r.exit_code == 1 and "no sample could be extracted" in r.stderr and "1.png" in r.stderr
    assert not out.exists() and not (tmp_path / "dev.parquet.partial").exists()
    run("extract", "image", root, "--raw", "-o", out, "-q")


def test_outputs_that_are_inputs_are_refused(images, tmp_path):
    root, _ = images
    torch.manual_seed(0)
    ckpt = tmp_path / "r.safetensors"
    save_file(torchvision.models.resnet18().state_dict(), ckpt)
    r = invoke("extract", "image", root, "--backbone", "resnet18", "--checkpoint", ckpt, "-o", ckpt)
    assert r.exit_code == 2 and "also an input" in r.stderr
    r = invoke("extract", "image", root, "--raw", "-o", root / "cat" / "00.png")
    assert r.exit_code == 2 and "also an input" in r.stderr
    r = invoke("extract", "image", root, "--raw", "--checkpoint", ckpt, "-o", tmp_path / "x.parquet")
    assert r.exit_code == 2 and "--backbone" in r.stderr


def test_model_errors_become_one_line():
    from cmkdtool.errors import CmkdError
    from cmkdtool.extract.runner import _encode
    from cmkdtool.extract.sources import Item

    class Picky:
        def encode(self, x):
            raise AssertionError("Wrong image height! Expected 224")

    with pytest.raises(CmkdError, match=r"a\.png: the model cannot take inputs of shape \[3, 8, 8\].*224"):
        _encode(Picky(), torch.zeros(2, 3, 8, 8), [], [Item("a", "a.png")], torch.device("cpu"), "fp32")


def test_default_layer_of_models_without_a_linear_classifier():
    from cmkdtool.extract.backbones import LayerFeatures

    model = torchvision.models.squeezenet1_1().eval()  # classifier: Dropout, Conv2d 1x1, ReLU, AvgPool
    with torch.no_grad():
        out = LayerFeatures(model)(torch.zeros(2, 3, 64, 64))
    assert out.shape == (2, 512)


def test_manifest_labels_and_folder_ids(tmp_path):
    from cmkdtool.errors import CmkdError
    from cmkdtool.extract.sources import from_folder, from_manifest

    def manifest(name: str, rows: str) -> list:
        (tmp_path / name).write_text(rows)
        src = from_manifest(str(tmp_path / name))
        return [it.labels if src.task == "multilabel" else it.label for it in src.items], src.class_names

    assert manifest("a.csv", 'id,path,labels\nx,x.png,"b;a;a"\ny,y.png,\nz,z.png,""\n') == (
        [[0, 1], [], []],
        ["a", "b"],
    )
    assert manifest("b.csv", 'id,path,labels\nx,x.png,"2;0;2"\ny,y.png,\n') == ([[0, 2], []], None)
    with pytest.raises(CmkdError, match="non-integer label 1.5 for id 'y'"):
        manifest("c.csv", "id,path,label\nx,x.png,0\ny,y.png,1.5\n")
    assert manifest("d.csv", "id,path,label\nx,x.png,cat\ny,y.png,dog\n") == ([0, 1], ["cat", "dog"])
    with pytest.raises(CmkdError, match="for id 'y'; split must be train, val or test"):
        (tmp_path / "e.csv").write_text("id,path,split\nx,x.png,train\ny,y.png,dev\n")
        from_manifest(str(tmp_path / "e.csv"))
    clip = tmp_path / "v" / "run" / "clip0.v1"
    clip.mkdir(parents=True)
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(clip / "f0.png")
    (tmp_path / "v" / "run" / ".ipynb_checkpoints").mkdir()
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "v" / "run" / ".ipynb_checkpoints" / "x.png")
    src = from_folder(str(tmp_path / "v"), (".mp4",), (".png",))
    assert [it.id for it in src.items] == ["run/clip0.v1"]
