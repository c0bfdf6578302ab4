"""The library face of every command: each ``run_*`` reads what the command reads and returns an object whose
methods write what the command writes (``.save``, ``.write``, ``.plot``), byte for byte.

    cmkdtool pretrain TABLES -i X -o OUT [...]        run_pretrain(TABLES, [X], ...).save(OUT)
    cmkdtool distill M TABLES -t T -i X -o OUT [...]  run_distill(M, TABLES, T, [X], ...).save(OUT)
    cmkdtool eval CKPT TABLES [--predictions P]       run_eval(CKPT, TABLES, ...).metrics / .write_predictions(P)
    cmkdtool spectrum IN... [-o S] [--plot P]         run_spectrum(IN, ...).results / .write(S) / .plot(P)
    cmkdtool fit-bottleneck T B TABLES -o OUT         run_fit_bottleneck(T, B, TABLES, dims, ...).save(OUT)
    cmkdtool rank-salience TABLES -a A -b B -o OUT    run_rank_salience(TABLES, A, B, ...).write(OUT)
    cmkdtool synth mfh|orthogonal|spoof -o OUT        run_synth_mfh(...).write(OUT) / run_synth_orthogonal(...) /
                                                      run_synth_spoof(...)
    cmkdtool extract KIND SOURCE -o OUT               run_extract_table(KIND, SOURCE, extractor, OUT, ...) (streams)
    cmkdtool extract array SOURCE -o OUT              run_extract_array(SOURCE, ...).write(OUT)
    cmkdtool table convert IN -o OUT                  convert_table(IN, OUT, ...) (streams)
    cmkdtool table join A B... -o OUT                 join_tables([A, B, ...], OUT, ...) (out of core)

``open_checkpoint`` / ``open_tables`` (``pipelines.open``) are the shared first step. Files record the command
line given as ``command=`` (default: this process's); give the CLI's to get the same bytes as the CLI.
Submodules are imported on first use, so ``import cmkdtool.pipelines`` stays light.
"""

from __future__ import annotations

import importlib

_WHERE = {
    "run_pretrain": "train",
    "run_distill": "train",
    "run_eval": "evaluate",
    "run_spectrum": "spectrum",
    "run_fit_bottleneck": "bottleneck",
    "run_rank_salience": "salience",
    "run_synth_mfh": "synth",
    "run_synth_orthogonal": "synth",
    "run_synth_spoof": "synth",
    "run_extract_table": "extract",
    "run_extract_array": "extract",
    "convert_table": "table",
    "join_tables": "table",
    "open_checkpoint": "open",
    "open_tables": "open",
}

__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"cmkdtool.pipelines.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'cmkdtool.pipelines' has no attribute {name!r}")
