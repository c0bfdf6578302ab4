"""``distill pkt``: probabilistic knowledge transfer (Passalis & Tefas, ECCV 2018), as RepDistiller runs it."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from cmkdtool.losses.relational import pkt
from cmkdtool.methods._relational import RelationalDistiller, RelationalOptions
from cmkdtool.methods.registry import register
from cmkdtool.options import opt


@dataclass
class PKTParams(RelationalOptions):
    pkt_weight: float = opt(
        30000.0,
        "Weight (>= 0) of the PKT loss (RepDistiller scripts/run_cifar_distill.sh: -b 30000; the OS-MD "
        "authors' adda baseline uses 40000, TMM-MMH hmdb51_adda.sh).",
        ge=0,
    )


@register("pkt", PKTParams, "Probabilistic KT (PKT): KL between the batch's cosine-affinity distributions.")
class PKT(RelationalDistiller):
    """task_weight * CE + kd_weight * KD + pkt_weight * KL(teacher || student) of cosine-kernel affinities.

    The affinities are within the batch, so the student and teacher widths may differ.
    """

    term = "pkt"
    weight = "pkt_weight"

    def relation(self, student: Tensor, teacher: Tensor) -> Tensor:
        return pkt(student, teacher)
