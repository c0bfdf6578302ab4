"""``cmkdtool pretrain``: train a teacher or a baseline student (unimodal or late fusion) on its labels."""

from __future__ import annotations

from typing import Annotated

import typer

from cmkdtool.cli.common import (
    DeviceOpt,
    PrecisionOpt,
    QuietOpt,
    SeedOpt,
    SplitRatioOpt,
    SplitSeedOpt,
    check_output,
    command_line,
    note,
    parse_batch_size,
    parse_floats,
    parse_ints,
)

PANEL_MODEL = "Model"
PANEL_OPT = "Optimisation"

TablesArg = Annotated[list[str], typer.Argument(help="Feature table(s), joined on id ('-': Arrow stream on stdin).")]
InputOpt = Annotated[
    list[str],
    typer.Option("--input", "-i", help="Input column; repeat for a late-fusion model (e.g. -i audio -i image)."),
]
OutputOpt = Annotated[str, typer.Option("--output", "-o", help="Output checkpoint (.safetensors).")]


def pretrain(
    tables: TablesArg,
    input: InputOpt,
    output: OutputOpt,
    arch: Annotated[str, typer.Option(help="linear (softmax regression) or mlp.", rich_help_panel=PANEL_MODEL)] = "mlp",
    hidden: Annotated[
        str, typer.Option(help="Encoder hidden sizes for mlp, comma-separated.", rich_help_panel=PANEL_MODEL)
    ] = "256",
    head_hidden: Annotated[
        str,
        typer.Option(
            help="Hidden sizes of the head after fusion ('' = one linear layer).", rich_help_panel=PANEL_MODEL
        ),
    ] = "",
    activation: Annotated[str, typer.Option(help="relu, leaky_relu or gelu.", rich_help_panel=PANEL_MODEL)] = "relu",
    dropout: Annotated[
        float, typer.Option(help="Dropout probability after hidden layers.", rich_help_panel=PANEL_MODEL)
    ] = 0.0,
    batch_norm: Annotated[
        bool,
        typer.Option(
            "--batch-norm/--no-batch-norm", help="BatchNorm after hidden layers.", rich_help_panel=PANEL_MODEL
        ),
    ] = False,
    role: Annotated[
        str, typer.Option(help="Recorded role: teacher or student.", rich_help_panel=PANEL_MODEL)
    ] = "teacher",
    epochs: Annotated[int, typer.Option(help="Training epochs.", rich_help_panel=PANEL_OPT)] = 100,
    batch_size: Annotated[str, typer.Option(help="Batch size in rows, or 'full'.", rich_help_panel=PANEL_OPT)] = "64",
    optimizer: Annotated[str, typer.Option(help="adamw or sgd.", rich_help_panel=PANEL_OPT)] = "adamw",
    lr: Annotated[float, typer.Option(help="Base learning rate.", rich_help_panel=PANEL_OPT)] = 1e-3,
    momentum: Annotated[float, typer.Option(help="SGD momentum.", rich_help_panel=PANEL_OPT)] = 0.9,
    nesterov: Annotated[bool, typer.Option(help="SGD Nesterov momentum.", rich_help_panel=PANEL_OPT)] = False,
    weight_decay: Annotated[
        float, typer.Option(help="Weight decay (decoupled for adamw).", rich_help_panel=PANEL_OPT)
    ] = 0.0,
    schedule: Annotated[str, typer.Option(help="constant, step or cosine.", rich_help_panel=PANEL_OPT)] = "constant",
    milestones: Annotated[
        str,
        typer.Option(
            help="Epochs at which 'step' multiplies the rate by --gamma, e.g. 30,60.",
            rich_help_panel=PANEL_OPT,
        ),
    ] = "",
    gamma: Annotated[float, typer.Option(help="Rate multiplier at each milestone.", rich_help_panel=PANEL_OPT)] = 0.1,
    warmup_epochs: Annotated[int, typer.Option(help="Linear warm-up epochs.", rich_help_panel=PANEL_OPT)] = 0,
    clip_grad: Annotated[
        float | None, typer.Option(help="Clip the gradient norm to this value.", rich_help_panel=PANEL_OPT)
    ] = None,
    select: Annotated[
        str,
        typer.Option(help="Keep the 'best' epoch on the val split or the 'last'.", rich_help_panel=PANEL_OPT),
    ] = "best",
    split_ratio: SplitRatioOpt = "0.8,0.1,0.1",
    split_seed: SplitSeedOpt = 0,
    device: DeviceOpt = "auto",
    seed: SeedOpt = 0,
    precision: PrecisionOpt = "auto",
    quiet: QuietOpt = False,
) -> None:
    """Train a model on labelled features and write a self-describing checkpoint.

    One --input trains a unimodal model; several train a late-fusion model (an encoder per input,
    concatenation, head). Inputs are standardised with train-split statistics kept in the checkpoint.
    Writes OUTPUT and OUTPUT.history.jsonl (per-epoch losses and val metrics).
    """
    check_output(output, *tables)
    ratio = parse_floats(split_ratio, "--split-ratio", 3)
    hidden_sizes = parse_ints(hidden, "--hidden") if arch == "mlp" else []
    head_sizes = parse_ints(head_hidden, "--head-hidden")
    bs = parse_batch_size(batch_size)
    mil = parse_ints(milestones, "--milestones")

    from cmkdtool import __version__
    from cmkdtool.data.tensors import load_tensor_data
    from cmkdtool.engine.device import resolve_device, resolve_precision
    from cmkdtool.engine.loop import TrainConfig, config_record
    from cmkdtool.io.checkpoints import save_checkpoint
    from cmkdtool.io.history import write_history
    from cmkdtool.io.tables import file_sha256, read_tables
    from cmkdtool.methods.supervised import pretrain as run

    dev = resolve_device(device)
    cfg = TrainConfig(
        epochs=epochs,
        batch_size=bs,
        optimizer=optimizer,
        lr=lr,
        momentum=momentum,
        nesterov=nesterov,
        weight_decay=weight_decay,
        schedule=schedule,
        milestones=mil,
        gamma=gamma,
        warmup_epochs=warmup_epochs,
        select=select,
        clip_grad=clip_grad,
        seed=seed,
        precision=resolve_precision(precision, dev),
    )
    cfg.validate()
    table = read_tables(tables, columns=list(input))
    for n in table.notes:
        note(n, quiet)
    data = load_tensor_data(
        table,
        list(dict.fromkeys(input)),
        dev,
        split_ratio=ratio,
        split_seed=split_seed,
        require_train_classes=True,
    )
    model, result = run(
        data,
        arch=arch,
        hidden=hidden_sizes,
        head_hidden=head_sizes,
        activation=activation,
        dropout=dropout,
        batch_norm=batch_norm,
        role=role,
        config=cfg,
        quiet=quiet,
    )
    train_meta = {
        "command": command_line(),
        "method": "supervised",
        "version": __version__,
        "config": config_record(cfg),
        "device": str(dev),
        "split_ratio": ratio,
        "split_seed": split_seed,
        "data": [{"path": t, "sha256": file_sha256(t)} for t in tables],
        "rows": {s: data.count(s) for s in ("train", "val", "test")},
        "best_epoch": result.best_epoch,
        "best_metrics": result.best_metrics,
        "final_metrics": result.final_metrics,
    }
    save_checkpoint(output, model.state_dict(), model.spec, train_meta)
    write_history(output, result.history)
    key = "val/map" if data.task == "multilabel" else "val/accuracy"
    score = result.best_metrics.get(key)
    summary = (
        f"{key.split('/')[1]} {score:.4f} on val at epoch {result.best_epoch}"
        if score is not None
        else (f"train loss {result.final_metrics.get('train/loss', float('nan')):.4f}")
    )
    note(f"wrote {output} ({summary}) and {output}.history.jsonl", quiet)
