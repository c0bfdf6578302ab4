"""Presentation attack detection metrics (ISO/IEC 30107-3): hand-counted values, EER interpolation, edge cases,
and ``cmkdtool eval --pad`` end to end against ``pad_metrics`` on the model's own probabilities."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from cmkdtool.analysis.pad import PadOptions, bona_fide_scores, eer_threshold, pad_metrics, parse_pad_threshold
from cmkdtool.cli.app import app
from cmkdtool.errors import CmkdUsageError
from cmkdtool.io.tables import build_table, write_table

# ---------------------------------------------------------------------------------------------------
# pad_metrics at a threshold: a hand-counted confusion matrix
# ---------------------------------------------------------------------------------------------------

# 10 attacks of two types and 8 bona fide rows (label 1); threshold 0.5, accepted iff score >= 0.5.
PRINT = [0.10, 0.20, 0.50, 0.60, 0.30, 0.05]  # accepted: 0.50 (exactly at the threshold), 0.60 -> 2 of 6
REPLAY = [0.70, 0.90, 0.40, 0.80]  # accepted: 0.70, 0.90, 0.80 -> 3 of 4
BONA = [0.95, 0.85, 0.50, 0.45, 0.99, 0.30, 0.75, 0.65]  # rejected (< 0.5): 0.45, 0.30 -> 2 of 8
SCORES = np.array(PRINT + REPLAY + BONA)
LABELS = np.array([0] * 10 + [1] * 8)
TYPES = np.array(["print"] * 6 + ["replay"] * 4 + [None] * 8, dtype=object)


def test_hand_counted_rates() -> None:
    m = pad_metrics(SCORES, LABELS, 0.5, TYPES)
    assert m["n_attack"] == 10 and m["n_bona_fide"] == 8
    assert m["apcer"] == pytest.approx(5 / 10)  # (2 + 3) attacks accepted of 10
    assert m["apcer[print]"] == pytest.approx(2 / 6)
    assert m["apcer[replay]"] == pytest.approx(3 / 4)
    assert m["apcer_max"] == pytest.approx(3 / 4)  # ISO: the worst species
    assert m["bpcer"] == pytest.approx(2 / 8)
    assert m["acer"] == pytest.approx((1 / 2 + 1 / 4) / 2)  # 0.375, pooled APCER by default
    assert m["hter"] == pytest.approx(0.375)
    assert m["pad_threshold"] == 0.5
    assert m["notes"] == []
    keys = list(m)
    assert keys[keys.index("apcer") : keys.index("bpcer") + 1] == [
        "apcer",
        "apcer[print]",
        "apcer[replay]",
        "apcer_max",
        "bpcer",
    ]
    # ACER with the worst species; HTER keeps the pooled APCER
    worst = pad_metrics(SCORES, LABELS, 0.5, TYPES, apcer="max")
    assert worst["acer"] == pytest.approx((3 / 4 + 1 / 4) / 2)
    assert worst["hter"] == pytest.approx(0.375)


def test_without_attack_types_apcer_is_pooled() -> None:
    m = pad_metrics(SCORES, LABELS, 0.5)
    assert "apcer_max" not in m and not any(k.startswith("apcer[") for k in m)
    assert m["apcer"] == pytest.approx(0.5) and m["acer"] == pytest.approx(0.375)
    worst = pad_metrics(SCORES, LABELS, 0.5, apcer="max")  # one species: the max is the pooled APCER
    assert worst["acer"] == pytest.approx(0.375) and "one type" in worst["notes"][0]


def test_integer_attack_types_and_bona_fide_zero() -> None:
    # the same data with integer types and bona fide = 0 (labels flipped) gives the same rates
    types = np.array([1] * 6 + [2] * 4 + [0] * 8)
    m = pad_metrics(SCORES, 1 - LABELS, 0.5, types, bona_fide=0)
    assert m["apcer[1]"] == pytest.approx(2 / 6) and m["apcer[2]"] == pytest.approx(3 / 4)
    assert m["bpcer"] == pytest.approx(2 / 8) and "apcer[0]" not in m  # bona fide rows' types are ignored


def test_score_exactly_at_threshold_is_bona_fide() -> None:
    s, y = np.array([0.3, 0.3]), np.array([0, 1])
    at = pad_metrics(s, y, 0.3)
    assert at["apcer"] == 1.0 and at["bpcer"] == 0.0  # both accepted
    above = pad_metrics(s, y, np.nextafter(0.3, 1.0))
    assert above["apcer"] == 0.0 and above["bpcer"] == 1.0  # both rejected


# ---------------------------------------------------------------------------------------------------
# EER and TPR@APCER
# ---------------------------------------------------------------------------------------------------

# attacks 0.1, 0.4, 0.6; bona fide 0.3, 0.7, 0.8, 0.9.
# t       0.1  0.3  0.4  0.6  0.7  0.8  0.9  above
# APCER   3/3  2/3  2/3  1/3  0    0    0    0
# BPCER   0    0    1/4  1/4  1/4  2/4  3/4  1
# APCER - BPCER changes sign between 0.6 (+1/12) and 0.7 (-1/4): w = (1/12) / (1/12 + 1/4) = 1/4,
# EER = 1/3 + 1/4 (0 - 1/3) = 1/4 (= BPCER, constant 1/4 there), threshold = 0.6 + 1/4 (0.7 - 0.6) = 0.625.
EER_S = np.array([0.1, 0.4, 0.6, 0.3, 0.7, 0.8, 0.9])
EER_Y = np.array([0, 0, 0, 1, 1, 1, 1])


def test_eer_interpolated_by_hand() -> None:
    t, eer = eer_threshold(EER_S, EER_Y)
    assert eer == pytest.approx(0.25) and t == pytest.approx(0.625)
    m = pad_metrics(EER_S, EER_Y)
    assert m["eer"] == pytest.approx(0.25) and m["eer_threshold"] == pytest.approx(0.625)


def test_eer_exact_crossing_and_constant_scores() -> None:
    # separable: APCER = BPCER = 0 first at t = 0.8 (the lowest threshold where they meet)
    assert eer_threshold(np.array([0.1, 0.2, 0.8, 0.9]), np.array([0, 0, 1, 1])) == (0.8, 0.0)
    # one score for everything: accept all (APCER 1, BPCER 0) or reject all (0, 1): EER 0.5
    t, eer = eer_threshold(np.full(4, 0.5), np.array([0, 0, 1, 1]))
    assert eer == pytest.approx(0.5) and t == pytest.approx(0.5)


def test_tpr_at_apcer_by_hand() -> None:
    m = pad_metrics(EER_S, EER_Y, tpr_at=(0.7, 0.34, 0.01))
    assert m["tpr@apcer=0.7"] == 1.0  # t = 0.3: APCER 2/3 <= 0.7, BPCER 0
    assert m["tpr@apcer=0.34"] == 0.75  # t = 0.6: APCER 1/3, BPCER 1/4
    assert m["tpr@apcer=0.01"] == 0.75  # t = 0.7: APCER 0 (3 attacks: only 0 is below 1e-2)


def test_tpr_at_apcer_target_reached_exactly() -> None:
    # 100 attacks, one of them at 0.95: APCER = 1/100 exactly meets the 1e-2 target from t = 0.55 on
    attacks = [*np.linspace(0.0, 0.5, 99), 0.95]
    bona = [0.6, 0.7, 0.8, 0.9, 0.96, 0.97, 0.98, 0.99, 0.55, 0.4]
    m = pad_metrics(np.array(attacks + bona), np.array([0] * 100 + [1] * 10))
    assert m["tpr@apcer=0.01"] == pytest.approx(0.9)  # t = 0.55: only 0.4 rejected
    assert m["tpr@apcer=0.001"] == pytest.approx(0.4)  # APCER 0 needs t = 0.96: six bona fide rejected
    assert m["tpr@apcer=0.0001"] == pytest.approx(0.4)


def test_eer_matches_roc_brentq_reference() -> None:
    """The usual recipe: brentq on 1 - x - interp1d(fpr, tpr)(x) over scikit-learn's ROC (bona fide positive)."""
    roc_curve = pytest.importorskip("sklearn.metrics").roc_curve
    brentq = pytest.importorskip("scipy.optimize").brentq
    interp1d = pytest.importorskip("scipy.interpolate").interp1d
    rng = np.random.default_rng(0)
    for decimals in (1, 2, 6):  # ties at 1 and 2 decimals
        y = rng.integers(0, 2, 80)
        s = np.round(rng.random(80) * 0.6 + 0.3 * y, decimals)
        fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
        ref = brentq(lambda x, fpr=fpr, tpr=tpr: 1 - x - interp1d(fpr, tpr)(x), 0, 1)
        assert eer_threshold(s, y)[1] == pytest.approx(ref, abs=1e-9)  # brentq's own tolerance


# ---------------------------------------------------------------------------------------------------
# edge cases and errors
# ---------------------------------------------------------------------------------------------------


def test_no_attack_or_no_bona_fide_gives_nan_with_a_note() -> None:
    only_bona = pad_metrics(np.array([0.2, 0.9]), np.array([1, 1]), attack_types=np.array([None, None]))
    assert only_bona["bpcer"] == 0.5
    for k in ("apcer", "apcer_max", "acer", "hter", "eer", "eer_threshold", "tpr@apcer=0.01"):
        assert math.isnan(only_bona[k]), k
    assert "no attack rows" in only_bona["notes"][0]
    only_attack = pad_metrics(np.array([0.2, 0.9]), np.array([0, 0]))
    assert only_attack["apcer"] == 0.5
    for k in ("bpcer", "acer", "hter", "eer", "tpr@apcer=0.001"):
        assert math.isnan(only_attack[k]), k
    assert "no bona fide rows" in only_attack["notes"][0]
    assert all(math.isnan(v) for v in eer_threshold(np.array([0.2]), np.array([0])))


def test_errors() -> None:
    with pytest.raises(ValueError, match="no attack type"):
        pad_metrics(SCORES, LABELS, attack_types=np.array([None] * 18, dtype=object))
    with pytest.raises(ValueError, match="entries"):
        pad_metrics(SCORES, LABELS[:3])
    with pytest.raises(ValueError, match="NaN"):
        pad_metrics(np.array([np.nan, 0.3]), np.array([0, 1]))
    with pytest.raises(ValueError, match="empty"):
        pad_metrics(np.zeros(0), np.zeros(0, int))
    with pytest.raises(ValueError, match="apcer"):
        pad_metrics(SCORES, LABELS, apcer="mean")
    with pytest.raises(ValueError, match="finite"):
        pad_metrics(SCORES, LABELS, threshold=float("nan"))


def test_bona_fide_scores_is_a_stable_softmax_column() -> None:
    logits = np.array([[0.0, 0.0], [1000.0, 0.0], [-3.0, 2.0]])
    p1 = bona_fide_scores(logits, 1)
    assert p1 == pytest.approx([0.5, 0.0, 1 / (1 + math.exp(-5))])
    assert p1 + bona_fide_scores(logits, 0) == pytest.approx(np.ones(3))


def test_options() -> None:
    assert parse_pad_threshold("val-eer") == "val-eer" and parse_pad_threshold("0.25") == 0.25
    with pytest.raises(CmkdUsageError, match="--pad-threshold"):
        parse_pad_threshold("eer")
    with pytest.raises(CmkdUsageError, match="add --pad"):
        PadOptions(pad_threshold="val-eer").validate()
    with pytest.raises(CmkdUsageError, match="--bona-fide-class"):
        PadOptions(pad=True, bona_fide_class=2).validate()
    PadOptions(pad=True, pad_threshold="val-eer", apcer_max=True).validate()


# ---------------------------------------------------------------------------------------------------
# cmkdtool eval --pad
# ---------------------------------------------------------------------------------------------------

runner = CliRunner()


def run(*args) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == 0, result.output
    return result.stdout


def fails(*args, code: int) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def pad_run(tmp_path_factory):
    """A 90-row bona fide (1) / attack (0) table, 30 rows per split, with and without an attack_type column,
    and a linear model trained on it for a few epochs (it must separate the classes only partly)."""
    d = tmp_path_factory.mktemp("pad")
    rng = np.random.default_rng(0)
    n = 90
    label = (np.arange(n) % 3 != 0).astype(np.int64)  # 30 attacks, 60 bona fide
    x = (rng.normal(size=(n, 4)) + 0.7 * label[:, None]).astype(np.float32)
    split = np.repeat(["train", "val", "test"], 30)
    ids = [f"s{i:03d}" for i in range(n)]
    table = build_table(ids, {"x": x}, label=label, split=split)
    types = [None if y else ("print" if i % 2 else "replay") for i, y in enumerate(label)]
    write_table(table, d / "plain.parquet")
    write_table(table.append_column("attack_type", pa.array(types, pa.string())), d / "typed.parquet")
    int_types = [0 if y else 1 + (i // 3) % 3 for i, y in enumerate(label)]  # attacks: every third row
    write_table(table.append_column("pai", pa.array(int_types, pa.int64())), d / "pai.parquet")
    run(
        "pretrain", d / "plain.parquet", "-i", "x", "--arch", "linear", "--epochs", "3", "-q", "-o", d / "m.safetensors"
    )
    return d, dict(zip(ids, types, strict=True)), dict(zip(ids, int_types, strict=True))


def _predicted(path, bona_fide: int = 1):
    """(ids, labels, P(bona fide)) from an ``eval --predictions`` file: the model's own probabilities."""
    t = pq.read_table(path)
    logits = np.asarray(t.column("scores").to_pylist(), dtype=np.float32)
    return t.column("id").to_pylist(), t.column("label").to_numpy(), bona_fide_scores(logits, bona_fide)


def _pad_part(m: dict) -> dict:
    start = list(m).index("n_bona_fide")
    return dict(list(m.items())[start:])


def _same(got: dict, want: dict) -> None:
    want = {k: v for k, v in want.items() if k != "notes"}
    assert list(got) == list(want)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-12, abs=1e-15), k


def test_eval_pad_equals_pad_metrics_on_the_models_probabilities(pad_run) -> None:
    d, types, _ = pad_run
    m = d / "m.safetensors"
    # no attack_type column: pooled APCER only
    got = json.loads(run("eval", m, d / "plain.parquet", "--pad", "-f", "json", "--predictions", d / "p.parquet", "-q"))
    ids, y, s = _predicted(d / "p.parquet")
    _same(_pad_part(got), pad_metrics(s, y, 0.5))
    assert 0 < got["apcer"] < 1 or 0 < got["bpcer"] < 1  # a model that is not trivially perfect
    assert got["accuracy"] is not None and "r@1" in got  # the other metrics stay
    # the attack_type column is read when present: per-type APCER and APCER_max
    got = json.loads(run("eval", m, d / "typed.parquet", "--pad", "-f", "json", "--apcer-max"))
    want = pad_metrics(s, y, 0.5, np.array([types[i] for i in ids], dtype=object), apcer="max")
    _same(_pad_part(got), want)
    assert "apcer[print]" in got and "apcer[replay]" in got and "apcer_max" in got
    # another column of integer types, named
    _, _, pai = pad_run
    got = json.loads(run("eval", m, d / "pai.parquet", "--pad", "--attack-type-column", "pai", "-f", "json"))
    _same(_pad_part(got), pad_metrics(s, y, 0.5, np.array([pai[i] for i in ids])))
    assert {"apcer[1]", "apcer[2]", "apcer[3]"} <= set(got)


def test_eval_pad_val_eer_threshold_and_bona_fide_zero(pad_run) -> None:
    d, _, _ = pad_run
    m = d / "m.safetensors"
    got = json.loads(
        run("eval", m, d / "plain.parquet", "--pad", "--pad-threshold", "val-eer", "-f", "json", "--predictions",
            d / "t.parquet", "-q")
    )  # fmt: skip
    run("eval", m, d / "plain.parquet", "--split", "val", "--predictions", d / "v.parquet", "-q")
    _, vy, vs = _predicted(d / "v.parquet")
    thr, _ = eer_threshold(vs, vy)
    _, y, s = _predicted(d / "t.parquet")
    _same(_pad_part(got), pad_metrics(s, y, thr))
    assert got["pad_threshold"] == pytest.approx(thr) and got["pad_threshold"] != 0.5
    # bona fide = class 0: the scores are the other softmax column, the roles of the rows swap
    got = json.loads(run("eval", m, d / "plain.parquet", "--pad", "--bona-fide-class", "0", "-f", "json", "-q"))
    _same(_pad_part(got), pad_metrics(1 - s, y, 0.5, bona_fide=0))


def test_eval_pad_human_table_and_csv(pad_run) -> None:
    d, _, _ = pad_run
    out = run("eval", d / "m.safetensors", d / "typed.parquet", "--pad", "--no-retrieval", "-q")
    keys = [line.split()[0] for line in out.splitlines() if line and not line.startswith(" ")]
    i = keys.index("apcer")
    assert keys[i : i + 5] == ["apcer", "apcer[print]", "apcer[replay]", "apcer_max", "bpcer"]
    assert keys.index("tpr@apcer=0.0001") < keys.index("checkpoint")
    header = run("eval", d / "m.safetensors", d / "typed.parquet", "--pad", "-f", "csv", "-q").splitlines()[0]
    assert "apcer[replay]" in header.split(",") and "eer_threshold" in header.split(",")
    plain = json.loads(run("eval", d / "m.safetensors", d / "typed.parquet", "-f", "json", "-q"))
    assert "apcer" not in plain  # only with --pad


def test_eval_pad_errors(pad_run, tmp_path) -> None:
    d, _, _ = pad_run
    m = d / "m.safetensors"
    assert "add --pad" in fails("eval", m, d / "plain.parquet", "--pad-threshold", "val-eer", code=2)
    assert "--pad-threshold" in fails("eval", m, d / "plain.parquet", "--pad", "--pad-threshold", "2", code=2)
    assert "--bona-fide-class" in fails("eval", m, d / "plain.parquet", "--pad", "--bona-fide-class", "3", code=2)
    err = fails("eval", m, d / "plain.parquet", "--pad", "--attack-type-column", "kind", code=1)
    assert "no column 'kind'" in err and "--attack-type-column" in err
    err = fails("eval", m, d / "plain.parquet", "--pad", "--attack-type-column", "x", code=1)
    assert "strings or integers" in err
    # val-eer with no attack in the val split
    t = pq.read_table(d / "plain.parquet")
    keep = ~((t["split"].to_numpy(zero_copy_only=False) == "val") & (t["label"].to_numpy() == 0))
    write_table(t.filter(pa.array(keep)), tmp_path / "noattack.parquet")
    err = fails("eval", m, tmp_path / "noattack.parquet", "--pad", "--pad-threshold", "val-eer", code=1)
    assert "val" in err and "bona fide and attack" in err
    # an attack row without a type
    typed = pq.read_table(d / "typed.parquet")
    blank = typed.set_column(typed.schema.get_field_index("attack_type"), "attack_type", pa.nulls(90, pa.string()))
    write_table(blank, tmp_path / "blank.parquet")
    assert "no attack type" in fails("eval", m, tmp_path / "blank.parquet", "--pad", code=1)
    # a three-class model
    x = np.random.default_rng(1).normal(size=(30, 2)).astype(np.float32)
    write_table(build_table([f"r{i}" for i in range(30)], {"x": x}, label=np.arange(30) % 3), tmp_path / "c3.parquet")
    c3 = tmp_path / "c3.safetensors"
    run("pretrain", tmp_path / "c3.parquet", "-i", "x", "--arch", "linear", "--epochs", "1", "-q", "-o", c3)
    assert "two-class" in fails("eval", c3, tmp_path / "c3.parquet", "--pad", code=1)


# ---------------------------------------------------------------------------------------------------
# --select acer: training keeps the epoch with the lowest val ACER
# ---------------------------------------------------------------------------------------------------


def test_select_acer_keeps_the_lowest_val_acer(pad_run, tmp_path) -> None:
    from cmkdtool.io.checkpoints import read_checkpoint

    d, _, _ = pad_run
    out = tmp_path / "acer.safetensors"
    run("pretrain", d / "plain.parquet", "-i", "x", "--arch", "linear", "--epochs", "6", "--lr", "0.05",
        "--select", "acer", "-q", "-o", out)  # fmt: skip
    hist = [json.loads(line) for line in open(f"{out}.history.jsonl")]
    acers = [r["val/acer"] for r in hist]
    _, _, record = read_checkpoint(out)
    best = record["best_epoch"]
    assert acers[best - 1] == min(acers)  # the first epoch reaching the minimum
    assert all(a > min(acers) for a in acers[: best - 1])
    # the logged value is pad_metrics' ACER of the val rows (threshold 0.5, bona fide = 1) for the kept weights
    ev = json.loads(run("eval", out, d / "plain.parquet", "--split", "val", "--format", "json", "--pad"))
    assert ev["acer"] == pytest.approx(record["best_metrics"]["val/acer"], abs=1e-6)


def test_select_acer_needs_two_classes(tmp_path) -> None:
    rng = np.random.default_rng(1)
    label = np.arange(60) % 3
    table = build_table([f"r{i}" for i in range(60)], {"x": rng.normal(size=(60, 3)).astype(np.float32)},
                        label=label, split=np.repeat(["train", "val"], 30))  # fmt: skip
    write_table(table, tmp_path / "three.parquet")
    line = fails("pretrain", tmp_path / "three.parquet", "-i", "x", "--arch", "linear", "--epochs", "1",
                 "--select", "acer", "-o", tmp_path / "m.safetensors", code=2)  # fmt: skip
    assert "--select acer needs a two-class table" in line
