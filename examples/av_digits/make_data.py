#!/usr/bin/env python3
"""Build a small audio-visual digits set (in the spirit of AV-MNIST) for the cmkdtool example.

    python3 examples/av_digits/make_data.py OUT_DIR [--per-class 150] [--seed 0] [--snr 5 20] ...

Every sample pairs a handwritten digit image with a spoken digit name of the same class, like AV-MNIST
(MFH paper, Sec. 3 and App. B.1): the two are drawn independently within the class, so they share the label and
little else. Writes

    OUT_DIR/image/<digit>/<nnnn>.png   8-bit grayscale, 8x8 (or --image-size), from scikit-learn's bundled digits
    OUT_DIR/audio/<digit>/<nnnn>.wav   16-bit PCM mono, --duration seconds at 22050 Hz (espeak-ng's own rate)
    OUT_DIR/manifest.csv               id,label,image,audio plus how each sample was made

The same <digit>/<nnnn> stem names both files of a pair, so `cmkdtool extract` (folder mode: the class is the
subfolder, the id is the relative path without its extension) gives two tables that join on `id`.

Images (the weak, student modality): AV-MNIST removes 75 % of the energy of its MNIST images by PCA. Here the
images are projected onto the leading principal components of the whole digits set that carry
1 - --pca-removed of the variance around the mean image (0.75 removed keeps 2 of 64 components: a blurred blob
that often resembles the wrong digit), then Gaussian pixel noise (--image-noise, on the 0..1 scale) is added. The
8x8 resolution of the source is kept by default; --image-size upsamples (bilinear) for models that need more pixels.

Audio (the strong, teacher modality): the English name of the digit spoken by espeak-ng with a random voice
(several English accents and voice variants, whichever this espeak-ng has), speed (words per minute) and pitch,
trimmed of silence, placed at a random offset in a clip of --duration seconds, mixed with white noise at a
random SNR (--snr LO HI, dB, relative to the power of the spoken word) and scaled to a random peak level.
By default every sample gets its own utterance (espeak-ng takes ~15 ms a word); --pool K synthesises K per
digit once and lets the samples share them (each still with its own noise, offset and gain).

Deterministic for a seed (and a given espeak-ng version and voice set). Needs numpy, pillow, soundfile,
scikit-learn and the espeak-ng program (the system package espeak-ng on Debian/Ubuntu and in Homebrew). It
installs nothing itself: when one is missing it names what is missing and exits with status 1.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

try:
    import numpy as np
except ImportError:
    sys.exit(f"make_data.py: error: the Python package numpy is missing from {sys.prefix}; add it, then rerun")

DIGIT_NAMES = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
# espeak-ng voices tried in this order; those this installation lacks are skipped (the mbrola ones need extra
# packages, so none is listed). A voice is a language/accent with an optional +variant.
ACCENTS = ("en", "en-us", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
VARIANTS = ("", "+m1", "+m3", "+m7", "+f1", "+f2", "+f3", "+f4", "+klatt", "+klatt4")
ESPEAK_RATE = 22050  # Hz: espeak-ng writes 16-bit mono at this rate


def fail(message: str, status: int = 1) -> None:
    print(f"make_data.py: error: {message}", file=sys.stderr)
    sys.exit(status)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="make_data.py",
        description="Build a small audio-visual digits set: sklearn digit images (PNG) paired with spoken digit "
        "names synthesised by espeak-ng (WAV), laid out for `cmkdtool extract` folder mode.",
    )
    p.add_argument("out_dir", type=Path, help="Output folder (must not exist or be empty, unless --force).")
    p.add_argument("--per-class", type=int, default=150, help="Samples per digit (at most 174). [default: 150]")
    p.add_argument("--seed", type=int, default=0, help="Random seed. [default: 0]")
    p.add_argument(
        "--snr",
        type=float,
        nargs=2,
        default=(5.0, 20.0),
        metavar=("LO", "HI"),
        help="Audio: white-noise SNR range in dB, drawn uniformly per sample. [default: 5 20]",
    )
    p.add_argument(
        "--speed",
        type=int,
        nargs=2,
        default=(130, 200),
        metavar=("LO", "HI"),
        help="Audio: espeak-ng speed range, words per minute. [default: 130 200]",
    )
    p.add_argument(
        "--pitch",
        type=int,
        nargs=2,
        default=(20, 80),
        metavar=("LO", "HI"),
        help="Audio: espeak-ng pitch range, 0..99. [default: 20 80]",
    )
    p.add_argument("--duration", type=float, default=1.0, help="Audio: clip length in seconds. [default: 1.0]")
    p.add_argument(
        "--shift",
        type=float,
        default=0.2,
        help="Audio: the word starts at a random time in [0, SHIFT] seconds (within the clip). [default: 0.2]",
    )
    p.add_argument(
        "--pool",
        type=int,
        default=0,
        help="Audio: utterances synthesised per digit and shared by its samples (0: one per sample). [default: 0]",
    )
    p.add_argument(
        "--pca-removed",
        type=float,
        default=0.75,
        help="Images: fraction of the variance removed by keeping only the leading principal components "
        "(AV-MNIST: 0.75; 0 keeps the images intact). [default: 0.75]",
    )
    p.add_argument(
        "--image-noise",
        type=float,
        default=0.1,
        help="Images: standard deviation of Gaussian pixel noise on the 0..1 scale. [default: 0.1]",
    )
    p.add_argument(
        "--image-size",
        type=int,
        default=8,
        help="Images: side in pixels (8 is the source resolution; larger is bilinear upsampling). [default: 8]",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="espeak-ng processes run at once. [default: min(4, CPUs)]",
    )
    p.add_argument("--force", action="store_true", help="Replace OUT_DIR if it holds files.")
    p.add_argument("-q", "--quiet", action="store_true", help="No summary on stderr.")
    args = p.parse_args(argv)
    if not 1 <= args.per_class:
        p.error("--per-class must be at least 1")
    if args.snr[0] > args.snr[1] or args.speed[0] > args.speed[1] or args.pitch[0] > args.pitch[1]:
        p.error("--snr, --speed and --pitch take LO HI with LO <= HI")
    if not (80 <= args.speed[0] and args.speed[1] <= 450):
        p.error("--speed must lie within 80..450 words per minute (espeak-ng's range)")
    if not (0 <= args.pitch[0] and args.pitch[1] <= 99):
        p.error("--pitch must lie within 0..99")
    if not 0.0 <= args.pca_removed < 1.0:
        p.error("--pca-removed must lie in [0, 1)")
    if min(args.image_noise, args.pool, args.shift) < 0 or min(args.image_size, args.duration, args.jobs) <= 0:
        p.error("--image-noise, --pool, --shift must be >= 0; --image-size, --duration, --jobs must be positive")
    return args


def check_dependencies() -> None:
    """Say what is missing and where it comes from (never install anything), then exit with status 1."""
    missing = []
    for module, package in (("PIL", "pillow"), ("soundfile", "soundfile"), ("sklearn", "scikit-learn")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    problems = []
    if missing:
        problems.append(f"Python package(s) {', '.join(missing)} missing from {sys.prefix} (make venv adds them)")
    if shutil.which("espeak-ng") is None:
        problems.append(
            "the espeak-ng program is not on PATH (the system package espeak-ng on Debian/Ubuntu and in Homebrew)"
        )
    if problems:
        fail("; and ".join(problems))


def espeak(text: str, voice: str, speed: int, pitch: int, path: Path) -> subprocess.CompletedProcess:
    cmd = ["espeak-ng", "-w", str(path), "-v", voice, "-s", str(speed), "-p", str(pitch), text]
    return subprocess.run(cmd, capture_output=True, text=True, check=False)


def available_voices(tmp: Path) -> list[str]:
    """The voices of ACCENTS x VARIANTS that this espeak-ng can speak (an unknown voice exits non-zero)."""

    def works(voice: str) -> bool:
        path = tmp / f"probe-{voice}.wav"
        ok = espeak("one", voice, 175, 50, path).returncode == 0 and path.exists() and path.stat().st_size > 1000
        path.unlink(missing_ok=True)
        return ok

    accents = [a for a in ACCENTS if works(a)]
    if not accents:
        fail("espeak-ng cannot speak English here (none of the voices " + ", ".join(ACCENTS) + " works)")
    variants = [v for v in VARIANTS if v == "" or works(accents[0] + v)]
    return [a + v for a in accents for v in variants]


def trim(wave: np.ndarray, rel: float = 0.02) -> np.ndarray:
    """Drop leading and trailing samples quieter than rel x the peak (espeak-ng pads words with silence)."""
    loud = np.flatnonzero(np.abs(wave) > rel * np.abs(wave).max())
    return wave[loud[0] : loud[-1] + 1]


def synthesise(jobs: list[tuple[str, str, int, int]], tmp: Path, workers: int) -> list[np.ndarray]:
    """Speak each (text, voice, speed, pitch) job; returns float32 waves at ESPEAK_RATE, trimmed of silence."""
    import soundfile as sf

    def one(i: int) -> np.ndarray:
        text, voice, speed, pitch = jobs[i]
        path = tmp / f"utt-{i}.wav"
        done = espeak(text, voice, speed, pitch, path)
        if done.returncode != 0:
            fail(
                f"espeak-ng failed on {text!r} (voice {voice}, speed {speed}, pitch {pitch}): "
                f"{done.stderr.strip() or 'exit status ' + str(done.returncode)}"
            )
        wave, rate = sf.read(path, dtype="float32")
        path.unlink()
        if rate != ESPEAK_RATE or wave.ndim != 1 or not np.abs(wave).max() > 0:
            fail(f"espeak-ng wrote an unexpected file for {text!r} (voice {voice}): {rate} Hz, shape {wave.shape}")
        return trim(wave)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(jobs))))


def remove_energy(images: np.ndarray, removed: float) -> tuple[np.ndarray, int]:
    """AV-MNIST-style image degradation: project onto the leading principal components (fitted on all the
    images) that carry 1 - removed of the variance around the mean image. Returns the images and the number of
    components kept."""
    flat = images.reshape(len(images), -1)
    if removed == 0:
        return images.copy(), flat.shape[1]
    mean = flat.mean(axis=0)
    _, s, vt = np.linalg.svd(flat - mean, full_matrices=False)
    share = np.cumsum(s**2) / np.sum(s**2)
    kept = int(np.searchsorted(share, 1.0 - removed) + 1)
    basis = vt[:kept]
    return (mean + (flat - mean) @ basis.T @ basis).reshape(images.shape), kept


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_dependencies()
    import soundfile as sf
    from PIL import Image
    from sklearn.datasets import load_digits

    start = time.perf_counter()
    out: Path = args.out_dir
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not args.force:
            fail(f"{out} exists and is not empty; choose another folder or pass --force to replace it")

    digits = load_digits()
    pixels = digits.images.astype(np.float64) / 16.0  # (1797, 8, 8), 0..16 -> 0..1
    target = digits.target.astype(np.int64)
    smallest = int(np.bincount(target, minlength=10).min())
    if args.per_class > smallest:
        fail(f"--per-class {args.per_class} is more than the digits set has for every class ({smallest})")

    pick_seq, audio_seq, sample_seq = np.random.SeedSequence(args.seed).spawn(3)
    pick_rng, audio_rng = np.random.default_rng(pick_seq), np.random.default_rng(audio_seq)
    # The images: per_class of each digit, in a seeded order; PCA fitted on the whole digits set.
    projected, kept = remove_energy(pixels, args.pca_removed)
    chosen = [np.sort(pick_rng.permutation(np.flatnonzero(target == d))[: args.per_class]) for d in range(10)]

    out.parent.mkdir(parents=True, exist_ok=True)
    build = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        voices = available_voices(build)
        # The utterances: one per sample, or --pool per digit shared by the digit's samples.
        per_digit = args.pool or args.per_class
        jobs = [
            (
                DIGIT_NAMES[d],
                voices[audio_rng.integers(len(voices))],
                int(audio_rng.integers(args.speed[0], args.speed[1] + 1)),
                int(audio_rng.integers(args.pitch[0], args.pitch[1] + 1)),
            )
            for d in range(10)
            for _ in range(per_digit)
        ]
        waves = synthesise(jobs, build, args.jobs)
        synth_s = time.perf_counter() - start

        clip_len = int(round(args.duration * ESPEAK_RATE))
        rows, cropped = [], 0
        sample_seqs = sample_seq.spawn(10 * args.per_class)
        rms = [float(np.sqrt(np.mean(np.square(w, dtype=np.float64)))) for w in waves]
        for d in range(10):
            (build / "image" / str(d)).mkdir(parents=True)
            (build / "audio" / str(d)).mkdir(parents=True)
            for k, index in enumerate(chosen[d]):
                n = d * args.per_class + k
                rng = np.random.default_rng(sample_seqs[n])
                stem = f"{d}/{n:04d}"
                # image: the projected digit plus Gaussian pixel noise, 0..1 -> 0..255
                pixels_n = np.clip(projected[index] + rng.normal(0.0, args.image_noise, size=(8, 8)), 0.0, 1.0)
                img = Image.fromarray(np.round(pixels_n * 255.0).astype(np.uint8), mode="L")
                if args.image_size != 8:
                    img = img.resize((args.image_size, args.image_size), Image.Resampling.BILINEAR)
                img.save(build / "image" / f"{stem}.png", optimize=False)
                # audio: an utterance of this digit, at a random offset, in white noise, at a random level
                u = d * per_digit + (int(rng.integers(per_digit)) if args.pool else k)
                word = waves[u] / rms[u]  # RMS 1 over the spoken part
                if len(word) > clip_len:
                    word, cropped = word[:clip_len], cropped + 1
                clip = np.zeros(clip_len, dtype=np.float64)
                offset = int(rng.integers(min(clip_len - len(word), int(args.shift * ESPEAK_RATE)) + 1))
                clip[offset : offset + len(word)] = word
                snr_db = float(rng.uniform(*args.snr))
                clip += rng.normal(0.0, 10.0 ** (-snr_db / 20.0), size=clip_len)
                clip *= float(rng.uniform(0.3, 0.9)) / np.abs(clip).max()
                sf.write(build / "audio" / f"{stem}.wav", clip.astype(np.float32), ESPEAK_RATE, subtype="PCM_16")
                text, voice, speed, pitch = jobs[u]
                rows.append(
                    {
                        "id": stem,
                        "label": d,
                        "image": f"image/{stem}.png",
                        "audio": f"audio/{stem}.wav",
                        "digits_index": int(index),
                        "voice": voice,
                        "speed": speed,
                        "pitch": pitch,
                        "snr_db": round(snr_db, 2),
                        "offset_s": round(offset / ESPEAK_RATE, 3),
                    }
                )
        with open(build / "manifest.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        # Only a complete set takes OUT_DIR's name, so an interrupted run never leaves a half-written one.
        if out.exists():
            shutil.rmtree(out) if out.is_dir() else out.unlink()
        os.replace(build, out)
    except BaseException:
        shutil.rmtree(build, ignore_errors=True)
        raise

    if not args.quiet:
        total = time.perf_counter() - start
        print(
            f"wrote {len(rows)} image/audio pairs ({args.per_class} per digit) to {out} in {total:.1f} s "
            f"(espeak-ng: {len(jobs)} utterances, {len(voices)} voices, {synth_s:.1f} s); images {args.image_size}x"
            f"{args.image_size} keeping {kept} of 64 principal components + noise {args.image_noise}; audio "
            f"{args.duration:g} s at {ESPEAK_RATE} Hz, SNR {args.snr[0]:g}..{args.snr[1]:g} dB"
            + (f"; {cropped} utterances longer than --duration were cut" if cropped else ""),
            file=sys.stderr,
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
