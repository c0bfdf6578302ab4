"""Stateful parts of the contrastive methods: projection heads, CRD's memory banks and the negative sampler.

The losses themselves are pure functions in ``losses/contrastive.py``; these modules own the state: learned
heads, the two memory banks with their normalisation constants (buffers, so ``--resume`` restores them), and
the row lists the negatives are drawn from (rebuilt from the table, not saved).

Everything stays on the device: indices are drawn with ``torch.rand`` on the device (the global generator, saved
and restored by the engine), the normalisation constants are set with ``torch.where`` (no ``.item()``), so a step
makes no host sync.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmkdtool.errors import CmkdError

__all__ = ["Composition", "ContrastMemory", "Embed", "NegativeSampler"]


class Embed(nn.Module):
    """A projection head: ``Linear(dim_in, dim_out)`` then L2 normalisation of each row.

    RepDistiller ``crd/criterion.py`` ``Embed`` (CRD), GMC's shared ``AffectEncoder`` and the heads of CCL/InfoNCE
    in cmkdtool. Deviation: ``F.normalize`` (eps 1e-12) instead of dividing by the bare norm (NaN for a zero row).
    """

    def __init__(self, dim_in: int, dim_out: int):
        super().__init__()
        self.linear = nn.Linear(dim_in, dim_out)

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(self.linear(x.flatten(1)), dim=1)


class ContrastMemory(nn.Module):
    """CRD's two memory banks (RepDistiller ``crd/memory.py`` ``ContrastMemory``), one row per table row.

    ``memory_student`` holds the student embeddings (the reference's ``memory_v1``), ``memory_teacher`` the teacher
    ones (``memory_v2``). Rows start uniform in ``[-s, s]``, ``s = 1/sqrt(dim/3)`` (not normalised, as CRD; CRCD
    starts them normalised: ``normalized=True``). ``z`` holds the normalisation constants (student anchor,
    teacher anchor), -1 until the first ``normalise`` call sets them to ``mean(scores) * n_data``; then frozen.

    Args:
        rows: bank rows (the table's rows; rows outside the train split are never read or written).
        dim: embedding width.
        n_data: the number of training samples N (the noise probability is 1/N).
        momentum: m of the update ``row <- normalise(m * row + (1 - m) * embedding)``.
        normalized: start with unit rows (CRCD).
        generator: for the initial rows (default: the global generator).
    """

    def __init__(
        self,
        rows: int,
        dim: int,
        n_data: int,
        momentum: float = 0.5,
        normalized: bool = False,
        device: torch.device | str | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.n_data, self.momentum = int(n_data), float(momentum)
        s = 1.0 / math.sqrt(dim / 3)
        banks = torch.rand(2, rows, dim, generator=generator).mul_(2 * s).sub_(s)
        if normalized:
            banks = F.normalize(banks, dim=2)
        self.register_buffer("memory_student", banks[0].clone().to(device))
        self.register_buffer("memory_teacher", banks[1].clone().to(device))
        self.register_buffer("z", torch.full((2,), -1.0, device=device))

    def normalise(self, student_scores: Tensor, teacher_scores: Tensor) -> tuple[Tensor, Tensor]:
        """Divide the (student-anchor, teacher-anchor) scores by Z, setting Z from these scores on the first call."""
        first = torch.stack([student_scores.detach().mean(), teacher_scores.detach().mean()]) * self.n_data
        with torch.no_grad():
            self.z.copy_(torch.where(self.z < 0, first.to(self.z.dtype), self.z))
        z = self.z.to(student_scores.dtype)
        return student_scores / z[0], teacher_scores / z[1]

    @torch.no_grad()
    def update(self, index: Tensor, student: Tensor, teacher: Tensor) -> None:
        """Momentum update of rows ``index`` with this step's embeddings (after scoring, as the reference)."""
        m = self.momentum
        for bank, v in ((self.memory_student, student), (self.memory_teacher, teacher)):
            rows = bank[index] * m + v.detach().to(bank.dtype) * (1 - m)
            bank.index_copy_(0, index, F.normalize(rows, dim=1))


class NegativeSampler(nn.Module):
    """Draws positive and negative row indices among the train rows, on the device, without host syncs.

    With ``labels`` (a single-label table), negatives of a sample come from the other classes, as CRD's
    ``CIFAR100InstanceSample`` draws them; without, from every other train row. Draws are i.i.d. with replacement
    (the reference draws without replacement within a sample when K is at most the other-class count: the same
    objective, a slightly different estimator). ``positive(index, relax=True)`` draws a random same-class row
    (CRD's ``relax`` mode); otherwise the row itself (``exact``).

    The train rows are kept sorted by class: a draw ``u`` uniform over the ``N - n_c`` rows outside class ``c``
    skips the class's block (``u + n_c`` when ``u`` reaches its start), which is exact and branch-free.
    """

    def __init__(self, train_index: Tensor, rows: int, labels: Tensor | None = None):
        super().__init__()
        device = train_index.device
        train = train_index.long()
        if labels is None:
            key = torch.zeros(len(train), dtype=torch.long, device=device)
        else:
            key = labels.long()[train]
        order = torch.argsort(key * (len(train) + 1) + torch.arange(len(train), device=device))
        sorted_rows, sorted_key = train[order], key[order]
        classes = int(key.max()) + 1 if len(key) else 1
        count = torch.bincount(sorted_key, minlength=classes)
        start = torch.cumsum(count, 0) - count
        label_of = torch.zeros(rows, dtype=torch.long, device=device)
        label_of[sorted_rows] = sorted_key
        position = torch.zeros(rows, dtype=torch.long, device=device)
        position[sorted_rows] = torch.arange(len(train), device=device)
        self.class_aware = labels is not None
        self.n_train = len(train)
        if self.n_train < 2 or (self.class_aware and int((count > 0).sum()) < 2):
            what = "two classes" if self.class_aware else "two rows"
            raise CmkdError(
                f"negatives need at least {what} in the train split, got {self.n_train} rows of "
                f"{int((count > 0).sum())} class(es); add train rows of another class"
            )
        for name, t in (("rows", sorted_rows), ("start", start), ("count", count), ("label_of", label_of)):
            self.register_buffer(name, t, persistent=False)
        self.register_buffer("position", position, persistent=False)

    def _uniform(self, shape: tuple[int, ...], high: Tensor | int) -> Tensor:
        """Integers uniform in [0, high) (``high``: an int, or a tensor broadcast over ``shape``), drawn in float64
        on the device (an int high makes no host-to-device copy)."""
        u = torch.rand(shape, dtype=torch.float64, device=self.rows.device)
        if isinstance(high, int):
            return (u * high).long().clamp_(max=high - 1)
        return torch.minimum((u * high.to(torch.float64)).long(), high - 1)

    def negatives(self, index: Tensor, k: int) -> Tensor:
        """(B, k) negatives for the rows ``index``: other classes (class-aware) or any other train row."""
        if self.class_aware:
            c = self.label_of[index].unsqueeze(1)
            start, count = self.start[c], self.count[c]
            u = self._uniform((len(index), k), self.n_train - count)
            return self.rows[u + (u >= start) * count]
        pos = self.position[index].unsqueeze(1)
        u = self._uniform((len(index), k), self.n_train - 1)
        return self.rows[u + (u >= pos)]

    def shared(self, k: int) -> Tensor:
        """(k,) rows uniform over the train split, one draw for the whole batch (shared negatives)."""
        u = self._uniform((k,), self.n_train)
        return self.rows[u]

    def positive(self, index: Tensor, relax: bool = False) -> Tensor:
        """(B,) positives: the rows themselves (``exact``) or a random row of the same class (``relax``)."""
        if not relax:
            return index
        c = self.label_of[index]
        return self.rows[self.start[c] + self._uniform((len(index),), self.count[c])]


class Composition(nn.Module):
    """CCL's composition classifier (yanbeic/CCL ``models/composition_classifier.py``, ``normalization=True``).

    ``m = a + Linear([n(a), n(v)])`` (a residual on the teacher feature ``a`` from both normalised features,
    ``n`` = L2 normalisation) and its own classifier ``logits = Linear(m)``; CCL's teacher side, trained with
    the student and not deployed.
    """

    def __init__(self, teacher_dim: int, student_dim: int, num_classes: int):
        super().__init__()
        self.residual = nn.Linear(teacher_dim + student_dim, teacher_dim)
        self.fc = nn.Linear(teacher_dim, num_classes)

    def forward(self, teacher: Tensor, student: Tensor) -> tuple[Tensor, Tensor]:
        both = torch.cat([F.normalize(teacher, dim=1), F.normalize(student, dim=1)], dim=1)
        m = teacher + self.residual(both)
        return m, self.fc(m)
