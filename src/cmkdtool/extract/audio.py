"""``extract audio``: decode, mix to mono, resample, crop/pad, then MFCC, log-mel or log spectrogram.

1. decode WAV/FLAC/OGG/MP3 with soundfile (libsndfile); other formats with torchcodec when it is installed;
2. mix to mono (mean of the channels) and resample to ``--sample-rate`` Hz (torchaudio.functional.resample,
   windowed sinc);
3. ``--duration D``: keep the first D seconds, zero-padding shorter clips at the end (without it every clip
   keeps its length, which only pooled features allow when the lengths differ);
4. features with torchaudio.transforms, window ``--n-fft`` samples (``--win-length``, default n_fft),
   hop ``--hop`` samples, ``--window`` hann|hamming:
   - ``spectrogram``: power spectrogram in dB, 10 log10(max(|STFT|^2, 1e-10)): n_fft/2 + 1 bins;
   - ``logmel``: mel power spectrogram (``--n-mels``, ``--f-min``, ``--f-max``, HTK mel scale) in dB, same floor;
   - ``mfcc``: torchaudio's MFCC (``--n-mfcc`` coefficients, DCT-II ortho of the dB mel spectrogram, which
     torchaudio clips at 80 dB below its maximum);
5. ``--pool none`` stores the [1, F, T] map (a one-channel image for ``--arch cnn2d``), ``mean`` the mean
   over time [F], ``mean+std`` the mean and the population standard deviation over time [2F].
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from cmkdtool.errors import CmkdError, CmkdUsageError

AUDIO_EXTS = (".wav", ".flac", ".ogg", ".oga", ".mp3", ".aif", ".aiff", ".opus", ".m4a", ".aac")
FEATURES = ("mfcc", "logmel", "spectrogram")
POOLS = ("none", "mean", "mean+std")
WINDOWS = ("hann", "hamming")
AMIN = 1e-10


def decode_audio(path: str):
    """(samples (n, channels) float32 numpy, sample rate)."""
    import soundfile as sf

    try:
        data, rate = sf.read(path, dtype="float32", always_2d=True)
        return data, int(rate)
    except (sf.LibsndfileError, RuntimeError, TypeError) as e:
        sf_error = e
    try:
        from torchcodec.decoders import AudioDecoder
    except ImportError:
        raise CmkdError(
            f"cannot decode ({sf_error}); a corrupt file, or a format that needs torchcodec and FFmpeg"
        ) from None
    samples = AudioDecoder(path).get_all_samples()
    return samples.data.T.numpy(), int(samples.sample_rate)


@dataclass
class AudioFeatures:
    """Settings of the audio pipeline (see the module docstring); callable on a mono waveform tensor."""

    features: str = "mfcc"
    sample_rate: int = 16000
    duration: float | None = None
    n_fft: int = 400
    hop: int = 160
    win_length: int | None = None
    window: str = "hann"
    n_mels: int = 64
    n_mfcc: int = 40
    f_min: float = 0.0
    f_max: float | None = None
    pool: str = "mean+std"

    def __post_init__(self) -> None:
        for name, value, choices in (
            ("--features", self.features, FEATURES),
            ("--pool", self.pool, POOLS),
            ("--window", self.window, WINDOWS),
        ):
            if value not in choices:
                raise CmkdUsageError(f"unknown {name} '{value}'; choose one of {', '.join(choices)}")
        if self.sample_rate < 1 or self.n_fft < 2 or self.hop < 1 or self.n_mels < 1 or self.n_mfcc < 1:
            raise CmkdUsageError("--sample-rate, --n-fft, --hop, --n-mels and --n-mfcc must be positive")
        if self.win_length is not None and not 1 <= self.win_length <= self.n_fft:
            raise CmkdUsageError(f"--win-length must be between 1 and --n-fft ({self.n_fft})")
        if self.duration is not None and self.duration <= 0:
            raise CmkdUsageError("--duration must be positive (seconds)")
        if self.features == "mfcc" and self.n_mfcc > self.n_mels:
            raise CmkdUsageError(f"--n-mfcc ({self.n_mfcc}) cannot exceed --n-mels ({self.n_mels})")
        self._transform = None

    def settings(self) -> dict:
        return {k: v for k, v in asdict(self).items() if not k.startswith("_")}

    def _stft_kwargs(self) -> dict:
        import torch

        window = torch.hann_window if self.window == "hann" else torch.hamming_window
        return {"n_fft": self.n_fft, "win_length": self.win_length, "hop_length": self.hop, "window_fn": window}

    def transform(self):
        """The torchaudio module: waveform (..., time) -> (..., F, frames)."""
        if self._transform is None:
            import torch
            import torchaudio.transforms as T

            db = T.AmplitudeToDB(stype="power", top_db=None)
            mel = {**self._stft_kwargs(), "n_mels": self.n_mels, "f_min": self.f_min, "f_max": self.f_max}
            if self.features == "spectrogram":
                t = torch.nn.Sequential(T.Spectrogram(power=2.0, **self._stft_kwargs()), db)
            elif self.features == "logmel":
                t = torch.nn.Sequential(T.MelSpectrogram(self.sample_rate, power=2.0, **mel), db)
            else:
                t = T.MFCC(self.sample_rate, n_mfcc=self.n_mfcc, melkwargs=mel)
            self._transform = t.eval()
        return self._transform

    def __getstate__(self) -> dict:  # DataLoader workers build their own transform
        return {**self.__dict__, "_transform": None}

    def waveform(self, path: str):
        """Decoded, mono, resampled and cropped/padded waveform (1-D float32 tensor)."""
        import torch
        import torchaudio.functional as AF

        data, rate = decode_audio(path)
        if data.shape[0] == 0:
            raise CmkdError("empty audio file")
        wave = torch.from_numpy(data).mean(dim=1)
        if rate != self.sample_rate:
            wave = AF.resample(wave, rate, self.sample_rate)
        if self.duration is not None:
            n = int(round(self.duration * self.sample_rate))
            wave = wave[:n] if wave.numel() >= n else torch.nn.functional.pad(wave, (0, n - wave.numel()))
        if wave.numel() < self.n_fft // 2 + 1:
            raise CmkdError(f"clip of {wave.numel()} samples is shorter than half a window (--n-fft {self.n_fft})")
        return wave

    def __call__(self, wave):
        import torch

        with torch.inference_mode():
            spec = self.transform()(wave)  # (F, frames)
        if self.pool == "none":
            return spec.unsqueeze(0)
        if self.pool == "mean":
            return spec.mean(dim=-1)
        return torch.cat([spec.mean(dim=-1), spec.std(dim=-1, correction=0)])


class AudioExtractor:
    stores_samples = True
    shape_hint = "pass --duration so that every clip has the same length, or pool over time (--pool mean+std)"

    def __init__(self, features: AudioFeatures) -> None:
        self.features = features

    def load(self, item):
        return self.features(self.features.waveform(item.path))

    def setup(self, device, precision: str) -> None:
        pass

    def encode(self, x):
        return x

    def settings(self) -> dict:
        return {"kind": "audio", **self.features.settings()}
