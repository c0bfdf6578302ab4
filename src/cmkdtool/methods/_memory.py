"""Shared pieces of ``distill crd | crcd``: the memory-bank options and the bank/sampler/head wiring.

Both run in RepDistiller's frame (``gamma * CE + alpha * KD + beta * loss``, see ``_relational.py``): two learned
projection heads (student and teacher side, ``nn.contrast.Embed``), two memory banks of the train rows' embeddings
(``nn.contrast.ContrastMemory``, method state: ``--resume`` restores them) and negatives drawn on the device
(``nn.contrast.NegativeSampler``). The heads and banks serve training only; the saved student is the student.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from cmkdtool.data.tensors import TensorData
from cmkdtool.engine.method import Batch
from cmkdtool.errors import CmkdUsageError
from cmkdtool.losses.contrastive import crd_nce
from cmkdtool.methods._relational import RelationalDistiller, RelationalOptions
from cmkdtool.nn.contrast import ContrastMemory, Embed, NegativeSampler
from cmkdtool.options import opt


@dataclass
class MemoryOptions(RelationalOptions):
    """The options of a memory-bank method (RepDistiller ``train_student.py`` names in parentheses)."""

    feat_dim: int = opt(128, "Width of the projection heads and memory banks (--feat_dim, default 128).", ge=1)
    nce_m: float = opt(0.5, "Momentum of the memory update, in [0, 1) (--nce_m 0.5).", ge=0, lt=1)
    mode: str = opt(
        "exact",
        "Positives: exact (the sample itself) or relax (a random sample of its class; multiclass tables) "
        "(--mode exact).",
        choices=("exact", "relax"),
    )


class MemoryDistiller(RelationalDistiller):
    """A relational distiller with projection heads and two memory banks over the train rows.

    Subclasses implement ``scores(v_s, v_t, batch) -> (student-anchor scores, teacher-anchor scores)``,
    unnormalised; this class divides them by Z, takes the NCE loss of both and updates the banks.
    """

    normalized_banks = False
    single_process_reason = "its memory banks and negative draws are per process (not gathered across processes)"

    def __init__(self, student, teacher, params: MemoryOptions, task: str, cache_teacher: bool = True):
        super().__init__(student, teacher, params, task, cache_teacher)
        s_dim, t_dim = student.layer_width(params.student_layer), teacher.layer_width(params.teacher_layer)
        self.embed_student = Embed(s_dim, params.feat_dim)
        self.embed_teacher = Embed(t_dim, params.feat_dim)
        self.memory: ContrastMemory | None = None
        self._pending: tuple[Tensor, Tensor, Tensor] | None = None
        self.sampler: NegativeSampler | None = None

    def setup(self, data: TensorData) -> None:
        super().setup(data)
        train = data.index("train")
        labels = data.target if data.task == "multiclass" else None
        if self.params.mode == "relax" and labels is None:
            raise CmkdUsageError(
                f"--mode relax draws positives of the same class: it needs a multiclass table, not {data.task}; "
                "use --mode exact"
            )
        device = data.device
        self.sampler = NegativeSampler(train.to(device), len(data), None if labels is None else labels.to(device))
        self.memory = ContrastMemory(
            len(data), self.params.feat_dim, len(train), self.params.nce_m, self.normalized_banks, device=device
        )

    def scores(self, v_s: Tensor, v_t: Tensor, batch: Batch) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def batch_term(self, student: Tensor, teacher: Tensor, batch: Batch) -> Tensor:
        v_s, v_t = self.embed_student(student), self.embed_teacher(teacher)
        out_s, out_t = self.memory.normalise(*self.scores(v_s, v_t, batch))
        loss = crd_nce(out_s, self.memory.n_data) + crd_nce(out_t, self.memory.n_data)
        # the banks move after the backward pass (the scores may have been computed from the bank itself, which
        # autograd keeps); the reference updates them in its forward, after scoring: the same values
        self._pending = (batch.index, v_s.detach(), v_t.detach())
        return loss

    def after_step(self, batch: Batch, step, index: int) -> None:
        pending, self._pending = self._pending, None
        if pending is not None:
            self.memory.update(*pending)

    def contrast_index(self, batch: Batch, k: int) -> Tensor:
        """(B, 1 + k): the positive (exact or relax) then k negatives per sample."""
        pos = self.sampler.positive(batch.index, relax=self.params.mode == "relax")
        return torch.cat([pos.unsqueeze(1), self.sampler.negatives(batch.index, k)], dim=1)
