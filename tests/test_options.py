"""Every numeric option of every command is checked before any work: NaN, a negative and zero each either pass
(the command then fails later, on the missing input file: exit 1) or are a one-line usage error naming the option
(exit 2) -- never a traceback, never a silent run. And the option rules themselves (cmkdtool.options)."""

from __future__ import annotations

import dataclasses
import typing

import pytest
import typer
from typer.testing import CliRunner

from cmkdtool.cli.app import app
from cmkdtool.errors import CmkdUsageError
from cmkdtool.options import check, check_value, opt, parse_split_ratio, range_text

NEGATIVE_OK = {"--weight-general", "--weight-specific-a", "--weight-specific-b"}
"""Options for which a negative value is meaningful (synth orthogonal's label weights flip a part's sign)."""


def _leaves(cmd, path):
    if hasattr(cmd, "list_commands"):
        for name in cmd.list_commands(None):
            yield from _leaves(cmd.get_command(None, name), [*path, name])
    else:
        yield path, cmd


def _numeric_cases():
    root = typer.main.get_command(app)
    for path, cmd in _leaves(root, []):
        base = list(path)
        for p in cmd.params:
            if not p.required:
                continue
            if p.param_type_name == "argument":
                base += ["missing.parquet"] * (1 if p.nargs in (1, -1) else p.nargs)
            else:
                base += [p.opts[0], "missing.safetensors" if "output" in p.name else f"missing-{p.name}"]
        if path[0] == "synth":  # valid values run the generator: keep it small (a walked flag given later wins)
            base += ["--train", "64", "--val", "0", "--test", "0"]
        for p in cmd.params:
            kind = _number(p.type_descriptor.annotation)
            if p.param_type_name == "option" and kind is not None and not p.required:
                yield pytest.param(base, p.opts[0], kind, id=f"{' '.join(path)} {p.opts[0]}")


def _number(annotation):
    """int or float for a numeric option (``int``, ``float | None``), else None."""
    kinds = [a for a in (typing.get_args(annotation) or (annotation,)) if a is not type(None)]
    return kinds[0] if len(kinds) == 1 and kinds[0] in (int, float) else None


CASES = list(_numeric_cases())


def test_the_walk_finds_the_numeric_options():
    flags = {(c.values[0][0], c.values[1]) for c in CASES}
    assert ("pretrain", "--lr") in flags and ("distill", "--temperature") in flags and ("eval", "--split-seed") in flags
    assert len(CASES) > 60


@pytest.mark.parametrize(("base", "flag", "kind"), CASES)
def test_numeric_option_rejects_nan_and_reports_ranges_in_one_line(base, flag, kind, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    values = (["nan"] if kind is float else []) + ["-1", "0"]
    for value in values:
        res = runner.invoke(app, [*base, flag, value])
        rejected = value == "nan" or (value == "-1" and flag not in NEGATIVE_OK)
        if rejected:
            assert res.exit_code == 2, (value, res.stderr)
        if res.exit_code == 0:  # a valid value on a command that reads no file (synth): it ran
            assert base[0] == "synth", (value, res.stdout)
            continue
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert res.exit_code in (1, 2), (value, res.exit_code, res.stderr, res.exception)
        assert len(lines) == 1 and lines[0].startswith("cmkdtool: error:"), (value, res.stderr)
        if rejected:
            assert flag in lines[0], lines[0]
        assert not list(tmp_path.iterdir()), "nothing is written when a command fails"


@pytest.mark.parametrize(
    ("args", "flag"),
    [
        (["--lr", "nan"], "--lr"),
        (["--weight-decay", "nan"], "--weight-decay"),
        (["--weight-decay", "-1"], "--weight-decay"),
        (["--momentum", "-1"], "--momentum"),
        (["--dropout", "1.5"], "--dropout"),
        (["--dropout", "-0.5"], "--dropout"),
        (["--hidden", "-3"], "--hidden"),
        (["--hidden", "0"], "--hidden"),
        (["--clip-grad", "-1"], "--clip-grad"),
        (["--gamma", "-1"], "--gamma"),
        (["--split-ratio", "nan,0.5,0.5"], "--split-ratio"),
        (["--warmup-epochs", "-3"], "--warmup-epochs"),
        (["--arch", "transformer"], "--arch"),
    ],
)
def test_issue_examples_are_usage_errors(args, flag, tmp_path):
    res = CliRunner().invoke(
        app, ["pretrain", str(tmp_path / "t.parquet"), "-i", "x", "-o", str(tmp_path / "o"), *args]
    )
    assert res.exit_code == 2 and flag in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


@pytest.mark.parametrize(
    "args",
    [["--temperature", "nan"], ["--kd-weight", "-1"], ["--rho", "1.5"], ["--weighting", "other"]],
)
def test_method_options_are_checked(args, tmp_path):
    res = CliRunner().invoke(
        app, ["distill", "kd", str(tmp_path / "t.parquet"), "-t", "t", "-i", "x", "-o", str(tmp_path / "o"), *args]
    )
    assert res.exit_code == 2 and args[0] in res.stderr and len(res.stderr.strip().splitlines()) == 1, res.stderr


def test_choices_are_listed_in_help():
    out = CliRunner().invoke(app, ["pretrain", "--help"]).stdout
    assert "<linear|mlp|cnn2d|cnn1d|resnet18|gru>" in out and "<constant|step|cosine|onecycle>" in out
    out = CliRunner().invoke(app, ["distill", "feature", "--help"]).stdout
    assert "<mse|l1|cosine|ce|clip|margin>" in out


@dataclasses.dataclass
class Rules:
    a: float = opt(1.0, "", gt=0)
    b: float = opt(0.5, "", ge=0, lt=1)
    c: list[int] = opt([1], "", item_ge=1)
    d: str = opt("x", "", choices=("x", "y"))
    e: float | None = opt(None, "", gt=0)


def test_rules_by_hand():
    check(Rules())
    for kw, text in [
        ({"a": 0.0}, "--a must be > 0; got 0"),
        ({"a": float("inf")}, "--a must be a finite number; got inf"),
        ({"b": 1.0}, "--b must be in [0, 1); got 1"),
        ({"c": [1, 0]}, "--c values must be >= 1; got 0"),
        ({"d": "z"}, "--d must be one of x, y; got 'z'"),
        ({"e": -1.0}, "--e must be > 0; got -1"),
    ]:
        with pytest.raises(CmkdUsageError) as e:
            check(Rules(**kw))
        assert str(e.value) == text
    check(Rules(e=None))  # None means "not set"
    assert range_text({"ge": 0, "le": 1}) == "in [0, 1]" and range_text({"lt": 2}) == "< 2"
    check_value("--x", True, {"gt": 5})  # booleans are flags, not numbers
    assert parse_split_ratio("0.8,0.1,0.1") == [0.8, 0.1, 0.1]
    assert parse_split_ratio("0,0,1") == [0.0, 0.0, 1.0]  # a test-only table (extract)
    for bad in ("-0.5,1,0.5", "0,0,0", "1,2", "a,b,c", "nan,0.5,0.5"):
        with pytest.raises(CmkdUsageError, match="--split-ratio"):
            parse_split_ratio(bad)
