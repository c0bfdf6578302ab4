"""Cross-modal information bottlenecks (CIBA Sec. 4.1, Eq. 7, Algorithm 1; Sec. 5.2.2), built from a JSON spec.

A bottleneck maps a teacher feature z' (standardised with train statistics kept as buffers) to an H-dimensional
bottleneck feature h' and decodes h' into the *student's* feature space: ``z_hat = q_phi(h')``. Trained to
generate the student's feature z from the teacher's (``cross_generation``), h' keeps what the two modalities
share. ``code(z')`` is the deterministic h' that ``distill ciba`` transfers into the student's first H dimensions.

Kinds (``KINDS``, the one table of them):

- ``dvib`` (default; Alemi et al. 2016): encoder MLP -> mean and log-variance of a diagonal Gaussian
  p_theta(h'|z'); the decoder reads a reparameterised sample while training, the mean otherwise;
  loss terms ``recon`` (Algorithm 1 line 8) and ``kl`` (line 9; weighted by lambda).
- ``attention`` (Sec. 5.2.2 "SA", after Srinivas et al. 2021): as dvib, with a multi-head self-attention block
  between the encoder MLP and the Gaussian head. Features are vectors, so the encoder's output is split into
  ``tokens`` tokens of width ``d_model`` (plus a learned position embedding), attended over, and flattened
  (our construction; the paper gives no shapes).
- ``vqvae`` (Sec. 5.2.2; van den Oord et al. 2017): the encoder outputs z_e in R^H, split into ``groups``
  groups of H / groups dimensions, each replaced by its nearest vector of a shared codebook of
  ``codebook_size`` codes; the decoder reads the quantised vector with straight-through gradients. Loss terms
  ``recon`` (cross-generation instead of VQ-VAE's self-reconstruction), ``codebook`` and ``commit`` (beta).
  ``code`` is the quantised vector.

Spec keys: ``role`` ("bottleneck"), ``kind``, ``in_dim`` (teacher feature width), ``out_dim`` (student feature
width), ``dim`` (H), ``hidden`` (encoder hidden sizes; the decoder mirrors them), ``activation``, and per kind
``tokens``, ``d_model``, ``heads`` (attention) or ``codebook_size``, ``groups``, ``beta`` (vqvae); ``teacher``
and ``student`` record the checkpoints and layers the features came from.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from cmkdtool.errors import CmkdError, CmkdUsageError
from cmkdtool.losses.bottleneck import cross_generation, gaussian_kl, reparameterize, vq_losses
from cmkdtool.nn.models import ACTIVATIONS, Standardize, mlp
from cmkdtool.nn.specs import BOTTLENECK_KINDS, KIND_KEYS


class Bottleneck(nn.Module):
    """Base: input standardisation and the decoder; subclasses define the encoder."""

    #: loss terms this kind returns, in the order they are reported
    terms: tuple[str, ...] = ("recon",)

    def __init__(self, spec: dict) -> None:
        super().__init__()
        _validate(spec)
        self.spec = spec
        self.in_dim, self.out_dim, self.dim = int(spec["in_dim"]), int(spec["out_dim"]), int(spec["dim"])
        self.hidden = [int(h) for h in spec.get("hidden") or []]
        self.activation = spec.get("activation", "relu")
        self.norm = Standardize(self.in_dim)
        back = self.hidden[::-1]
        self.decoder = nn.Sequential(
            *mlp(self.dim, back, self.activation, 0.0, False), nn.Linear(back[-1] if back else self.dim, self.out_dim)
        )

    def trunk_width(self) -> int:
        return self.hidden[-1] if self.hidden else self.in_dim

    def code(self, teacher: Tensor) -> Tensor:
        """The deterministic bottleneck feature h' (B, H) of teacher features (B, in_dim)."""
        raise NotImplementedError

    def forward(self, teacher: Tensor) -> Tensor:
        """The decoded student-space feature z_hat (B, out_dim), deterministic."""
        return self.decoder(self.code(teacher))

    def losses(self, teacher: Tensor, student: Tensor, sample: bool = True) -> dict[str, Tensor]:
        """Named loss terms for a batch (``sample``: draw the reparameterised h' instead of its mean)."""
        raise NotImplementedError


class DVIB(Bottleneck):
    """Deep variational information bottleneck: Gaussian encoder, MLP decoder (Alemi et al. 2016)."""

    terms = ("recon", "kl")

    def __init__(self, spec: dict) -> None:
        super().__init__(spec)
        self.trunk = self.make_trunk()
        self.stats = nn.Linear(self.trunk_out(), 2 * self.dim)

    def make_trunk(self) -> nn.Module:
        return mlp(self.in_dim, self.hidden, self.activation, 0.0, False)

    def trunk_out(self) -> int:
        return self.trunk_width()

    def posterior(self, teacher: Tensor) -> tuple[Tensor, Tensor]:
        """Mean and log-variance of p_theta(h' | z')."""
        mean, logvar = self.stats(self.trunk(self.norm(teacher.flatten(1)))).chunk(2, dim=1)
        return mean, logvar

    def code(self, teacher: Tensor) -> Tensor:
        return self.posterior(teacher)[0]

    def losses(self, teacher: Tensor, student: Tensor, sample: bool = True) -> dict[str, Tensor]:
        mean, logvar = self.posterior(teacher)
        h = reparameterize(mean, logvar) if sample else mean
        return {"recon": cross_generation(self.decoder(h), student.flatten(1)), "kl": gaussian_kl(mean, logvar)}


class SelfAttentionBlock(nn.Module):
    """Post-norm Transformer encoder block over ``tokens`` tokens: x = LN(x + MHSA(x)); x = LN(x + FFN(x))."""

    def __init__(self, tokens: int, d_model: int, heads: int) -> None:
        super().__init__()
        self.tokens, self.d_model = tokens, d_model
        self.position = nn.Parameter(torch.zeros(tokens, d_model))
        nn.init.normal_(self.position, std=0.02)
        self.attn = nn.MultiheadAttention(d_model, heads, batch_first=True)
        self.norm1 = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, x: Tensor) -> Tensor:
        x = x.view(len(x), self.tokens, self.d_model) + self.position
        x = self.norm1(x + self.attn(x, x, x, need_weights=False)[0])
        x = self.norm2(x + self.ffn(x))
        return x.flatten(1)


class AttentionIB(DVIB):
    """DVIB with multi-head self-attention between the encoder MLP and the Gaussian head (CIBA Sec. 5.2.2)."""

    def make_trunk(self) -> nn.Module:
        tokens, d_model, heads = int(self.spec["tokens"]), int(self.spec["d_model"]), int(self.spec["heads"])
        return nn.Sequential(
            *mlp(self.in_dim, self.hidden, self.activation, 0.0, False),
            nn.Linear(self.trunk_width(), tokens * d_model),
            SelfAttentionBlock(tokens, d_model, heads),
        )

    def trunk_out(self) -> int:
        return int(self.spec["tokens"]) * int(self.spec["d_model"])


class VQIB(Bottleneck):
    """Vector-quantised bottleneck with straight-through gradients and a cross-generation loss."""

    terms = ("recon", "codebook", "commit")

    def __init__(self, spec: dict) -> None:
        super().__init__(spec)
        self.groups = int(spec["groups"])
        self.beta = float(spec["beta"])
        self.encoder = nn.Sequential(
            *mlp(self.in_dim, self.hidden, self.activation, 0.0, False), nn.Linear(self.trunk_width(), self.dim)
        )
        k = int(spec["codebook_size"])
        self.codebook = nn.Embedding(k, self.dim // self.groups)
        nn.init.uniform_(self.codebook.weight, -1.0 / k, 1.0 / k)

    def encode(self, teacher: Tensor) -> Tensor:
        """The continuous encoder output z_e (B, H)."""
        return self.encoder(self.norm(teacher.flatten(1)))

    def quantize(self, encoded: Tensor) -> tuple[Tensor, Tensor]:
        """Nearest code per group: (quantised (B, H), code indices (B, groups))."""
        b = len(encoded)
        parts = encoded.reshape(b * self.groups, -1)
        book = self.codebook.weight
        dist = parts.float().square().sum(1, keepdim=True) - 2 * parts.float() @ book.float().T
        dist = dist + book.float().square().sum(1)
        index = dist.argmin(1)
        return book[index].reshape(b, self.dim).to(encoded.dtype), index.view(b, self.groups)

    @torch.no_grad()
    def init_codebook(self, teacher: Tensor, generator: torch.Generator | None = None) -> None:
        """Codes drawn from the encoder's outputs on ``teacher`` rows (a data-dependent start that avoids
        dead codes far from the data; with replacement when there are fewer group vectors than codes)."""
        parts = self.encode(teacher).reshape(-1, self.dim // self.groups)
        k = self.codebook.num_embeddings
        gen = generator or torch.Generator().manual_seed(0)
        n = len(parts)
        pick = torch.randint(n, (k,), generator=gen) if n < k else torch.randperm(n, generator=gen)[:k]
        self.codebook.weight.copy_(parts[pick.to(parts.device)])

    def code(self, teacher: Tensor) -> Tensor:
        return self.quantize(self.encode(teacher))[0]

    def losses(self, teacher: Tensor, student: Tensor, sample: bool = True) -> dict[str, Tensor]:
        encoded = self.encode(teacher)
        code, _ = self.quantize(encoded)
        straight = encoded + (code - encoded).detach()  # forward: the code; backward: identity to the encoder
        codebook, commit = vq_losses(encoded, code, self.beta)
        recon = cross_generation(self.decoder(straight), student.flatten(1))
        return {"recon": recon, "codebook": codebook, "commit": commit}


KINDS: dict[str, type[Bottleneck]] = dict(zip(BOTTLENECK_KINDS, (DVIB, AttentionIB, VQIB), strict=True))


def _validate(spec: dict) -> None:
    if spec.get("role") != "bottleneck":
        raise CmkdError(f"not a bottleneck spec (role {spec.get('role')!r})")
    kind = spec.get("kind")
    if kind not in KINDS:
        raise CmkdUsageError(f"unknown bottleneck kind {kind!r}; choose one of {', '.join(KINDS)}")
    for key in ("in_dim", "out_dim", "dim", *KIND_KEYS.get(kind, ())):
        if key not in spec:
            raise CmkdError(f"bottleneck spec lacks '{key}'")
    if int(spec["dim"]) < 1:
        raise CmkdUsageError(f"the bottleneck dimension H must be at least 1; got {spec['dim']}")
    if spec.get("activation", "relu") not in ACTIVATIONS:
        raise CmkdUsageError(f"unknown activation {spec.get('activation')!r}; choose one of {', '.join(ACTIVATIONS)}")
    if kind == "attention" and int(spec["d_model"]) % int(spec["heads"]):
        raise CmkdUsageError(f"--d-model {spec['d_model']} must be a multiple of --heads {spec['heads']}")
    if kind == "vqvae":
        if int(spec["groups"]) < 1 or int(spec["dim"]) % int(spec["groups"]):
            raise CmkdUsageError(f"--groups {spec['groups']} must divide the bottleneck dimension H = {spec['dim']}")
        if int(spec["codebook_size"]) < 2:
            raise CmkdUsageError(f"--codebook-size must be at least 2; got {spec['codebook_size']}")


def build_bottleneck(spec: dict) -> Bottleneck:
    """An untrained bottleneck of ``spec['kind']`` (the constructor validates the spec)."""
    kind = spec.get("kind")
    if kind not in KINDS:
        raise CmkdUsageError(f"unknown bottleneck kind {kind!r}; choose one of {', '.join(KINDS)}")
    return KINDS[kind](spec)
