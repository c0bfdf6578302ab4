"""``cmkdtool rank-salience`` as a library call (MFH Algorithm 1): align two networks by Eq. 28 (or take two
trained ones), rank the channels by permutation salience, report how good the alignment was."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

from cmkdtool.engine.config import TrainConfig
from cmkdtool.errors import CmkdUsageError
from cmkdtool.nn.specs import ModelOptions

SPLITS = ("train", "val", "test", "all")
JOINT_MODEL = {"arch": "linear"}
JOINT_TRAIN = {"optimizer": "sgd", "lr": 0.01, "batch_size": None, "epochs": 300, "select": "last"}
"""rank-salience's own defaults for the joint training (Eq. 28): softmax regressions (the paper's App. B.2
networks), full-batch SGD at lr 0.01 for 300 epochs, the last epoch. Measured on MFH-style tables (synth mfh and an
independent generator, 200 to 5000 rows, 3-5 seeds each): they recover 76% / 73% of the truly shared channels at
200 rows and 97% / 92% at 5000, where an MLP with the generic training defaults recovers about 51% / 52% and
53% / 83% (docs/methods.md#rank-salience)."""
POOR_CHANCE_MARGIN = 0.05
"""Rule A: poor when either network's val accuracy is at most the val majority-class rate plus this."""
POOR_DISTANCE_RATIO = 10.0
"""Rule B: poor when the val distance is more than this many times the train distance (memorised alignment)."""
SMALL_VAL = 50
"""Fewer val rows than this: the quality numbers are noisy (a note says so)."""


def joint_defaults() -> tuple[ModelOptions, TrainConfig]:
    """The networks and optimisation of rank-salience's joint training when none are given."""
    return ModelOptions(**JOINT_MODEL), TrainConfig(**JOINT_TRAIN)


@dataclass
class SalienceRun:
    results: list  # analysis.salience.SalienceResult per ranked layer
    meta: dict
    recovery: dict = field(default_factory=dict)  # input -> (share of the truly shared channels found, their count)
    quality: dict = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)

    def write(self, path: str) -> None:
        """The salience table (for pretrain/distill/eval --mask), this run's record in its metadata."""
        from cmkdtool.io.salience import write_salience

        write_salience(path, self.results, self.meta)


def alignment_quality(result, data) -> tuple[dict, list[str]]:
    """How well the Eq. 28 training aligned the networks, at the selected epoch: both networks' val accuracy, the
    val and train distances, the val majority-class rate and row count; and warnings when it is poor.

    Rule A: either val accuracy is at most the majority-class rate + ``POOR_CHANCE_MARGIN`` (a network barely beats
    chance: the ranking is mostly noise). Rule B: the val distance is more than ``POOR_DISTANCE_RATIO`` times the
    train distance (the alignment was memorised on the train rows). Over 486 runs on MFH-style tables, runs flagged
    by A recovered 39% of the truly shared channels, by B 55%, the others 74%."""
    import numpy as np

    row = result.history[result.best_epoch - 1] if result.history else {}
    quality = {k.split("/", 1)[1]: row[k] for k in ("val/accuracy", "val/accuracy_b", "val/dist") if k in row}
    if "train/dist" in row:
        quality["train_dist"] = row["train/dist"]
    val = data.index("val")
    warnings = []
    if len(val) == 0:
        return quality, ["note: no val rows: the joint training's quality cannot be checked"]
    quality["val_rows"] = int(len(val))
    if data.task == "multiclass" and data.labels is not None:
        counts = np.bincount(data.labels[val.cpu().numpy()].astype(np.int64))
        quality["val_majority"] = float(counts.max() / counts.sum())
    accs = [quality[k] for k in ("accuracy", "accuracy_b") if k in quality]
    reasons = []
    if accs and "val_majority" in quality and min(accs) <= quality["val_majority"] + POOR_CHANCE_MARGIN:
        reasons.append(
            f"a network's val accuracy {min(accs):.2f} is near the majority-class rate {quality['val_majority']:.2f}"
        )
    if (
        "dist" in quality
        and quality.get("train_dist", 0) > 0
        and quality["dist"] > POOR_DISTANCE_RATIO * quality["train_dist"]
    ):
        reasons.append(
            f"the val distance {quality['dist']:.3g} is {quality['dist'] / quality['train_dist']:.0f}x the train "
            "distance (memorised)"
        )
    if reasons:
        warnings.append(
            f"warning: poor joint training ({'; '.join(reasons)}): the ranking may be noise; see "
            "docs/methods.md#rank-salience (--arch linear --optimizer sgd --lr 0.01 --batch-size full --epochs 300 "
            "--select last are the defaults that work on small tables)"
        )
    if len(val) < SMALL_VAL:
        warnings.append(f"note: only {len(val)} val rows: the joint training's quality numbers are noisy")
    return quality, warnings


def run_rank_salience(
    tables: Sequence[str],
    teacher_input: str,
    student_input: str,
    *,
    teacher_model: str | None = None,
    student_model: str | None = None,
    layer: str | None = None,
    student_layer: str | None = None,
    both: bool = False,
    repeats: int = 100,
    distance: str = "mse",
    normalize: str = "minmax",
    split: str = "train",
    model: ModelOptions | None = None,
    config: TrainConfig | None = None,
    split_ratio=None,
    split_seed: int = 0,
    device="auto",
    quiet: bool = False,
    command: str | None = None,
) -> SalienceRun:
    import torch

    from cmkdtool.analysis.salience import NORMALIZE, rank_network, recovered
    from cmkdtool.data.tensors import check_model_inputs
    from cmkdtool.io.checkpoints import load_model, read_metadata
    from cmkdtool.io.provenance import file_record, provenance
    from cmkdtool.losses.alignment import DISTANCES
    from cmkdtool.pipelines.open import open_tables, resolve, show_notes, split_rule
    from cmkdtool.pipelines.train import joint_train

    a, b = teacher_input, student_input
    given = [m for m in (teacher_model, student_model) if m]
    if len(given) == 1:
        raise CmkdUsageError("give both --teacher-model and --student-model, or neither (to train them jointly)")
    if a == b:
        raise CmkdUsageError("--teacher-input and --student-input name the same column; give one per modality")
    if distance not in DISTANCES:
        raise CmkdUsageError(f"unknown --distance '{distance}'; choose one of {', '.join(DISTANCES)}")
    if normalize not in NORMALIZE:
        raise CmkdUsageError(f"unknown --normalize '{normalize}'; choose one of {', '.join(NORMALIZE)}")
    if split not in SPLITS:
        raise CmkdUsageError(f"unknown --split '{split}'; choose one of {', '.join(SPLITS)}")
    if repeats < 1:
        raise CmkdUsageError("--repeats must be at least 1")
    default_model, default_cfg = joint_defaults()
    model, cfg = model or default_model, config or default_cfg
    cfg.validate()  # checked now even when two trained networks make it unused
    dev = resolve(device)
    ratio, sseed = split_rule(split_ratio, split_seed)
    opened = open_tables(tables, [a, b], dev, split_ratio=ratio, split_seed=sseed, require_train_classes=not given)
    show_notes(opened.notes, quiet)
    table, data = opened.table, opened.data
    if not given:  # check the layers to rank before training, on networks of the same shape
        from cmkdtool.analysis.salience import layer_of
        from cmkdtool.nn.models import new_model

        hint = " (the default --arch linear has none: give --arch mlp)" if model.arch == "linear" else ""
        for col, name in ((a, layer), *(((b, student_layer),) if both and student_layer else ())):
            try:
                layer_of(new_model(data, model, "teacher", [col]), name)
            except CmkdUsageError as e:
                raise CmkdUsageError(f"{e}{hint if name else ''}") from None

    record: dict = {}
    quality, warnings = {}, []
    if given:
        net_a, net_b = load_model(teacher_model, dev), load_model(student_model, dev)
        for path, net, col in ((teacher_model, net_a, a), (student_model, net_b, b)):
            spec, _ = read_metadata(path)
            if net.input_names != [col]:
                raise CmkdUsageError(f"{path} reads {net.input_names}, not the single column '{col}'")
            check_model_inputs(table, spec, path)
        record["models"] = [file_record(p) for p in given]
    else:
        if data.target is None:
            raise CmkdUsageError(f"{table.name}: no labels for the joint training (Eq. 28); add a label column")
        net_a, net_b, result = joint_train(data, a, b, model=model, config=cfg, distance=distance, quiet=quiet)
        quality, warnings = alignment_quality(result, data)
        record["joint_training"] = {
            "model": asdict(model),
            "config": cfg.record(),
            "best_epoch": result.best_epoch,
            "final_metrics": result.final_metrics,
            "quality": quality,
        }
        if not quiet:
            print(f"aligned the two networks (Eq. 28): {_metrics_text(result.final_metrics)}", file=sys.stderr)
        for w in warnings:
            print(w, file=sys.stderr)  # also with --quiet: the ranking may be meaningless

    rows = data.index(split) if split != "all" else torch.arange(len(data), device=data.device)
    if len(rows) < 2:
        raise CmkdUsageError(f"{table.name}: the {split} split has {len(rows)} rows; pick another --split")
    common = {"repeats": repeats, "seed": cfg.seed, "distance": distance, "how": normalize, "quiet": quiet}
    results = [rank_network(net_a, net_b, data, rows, layer=layer, **common)]
    if both:
        layer_b = student_layer
        if layer_b is None and layer:
            layer_b = layer.replace(f"input.{a}", f"input.{b}").replace(f"encoders.{a}.", f"encoders.{b}.")
        results.append(rank_network(net_b, net_a, data, rows, layer=layer_b, **common))

    truth = (table.meta.get("synth") or {}) if isinstance(table.meta, dict) else {}
    meta = {
        "format": "cmkdtool.salience",
        **provenance(command, data=list(tables)),
        "paper": "Xue et al. 2023 (MFH), App. B.4 Algorithm 1",
        "inputs": {"teacher": a, "student": b},
        "layers": {r.input: r.layer for r in results},
        "distance": distance,
        "repeats": repeats,
        "seed": cfg.seed,
        "normalize": normalize,
        "split": split,
        "rows": len(rows),
        **record,
    }
    shared = {"xa": truth.get("general_a"), "xb": truth.get("general_b")}  # synth mfh's ground truth
    recovery = {
        r.input: (recovered(r, shared[r.input]), len(shared[r.input]))
        for r in results
        if shared.get(r.input) is not None and r.layer == f"input.{r.input}"
    }
    if recovery:
        meta["recovered_shared"] = {k: v[0] for k, v in recovery.items()}
    return SalienceRun(results, meta, recovery, quality, warnings)


def _metrics_text(metrics: dict) -> str:
    keys = [k for k in ("train/dist", "train/ce_a", "train/ce_b", "val/accuracy", "val/accuracy_b", "val/dist")]
    return ", ".join(f"{k.replace('/', ' ')} {metrics[k]:.4f}" for k in keys if k in metrics)


__all__ = ["SalienceRun", "alignment_quality", "run_rank_salience"]
