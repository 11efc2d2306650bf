"""Residual vector quantisation as in DAC (Kumar et al. 2023, "High-Fidelity Audio Compression
with Improved RVQGAN", §3.2 and descript-audio-codec quantize.py), plus codebook-health tools.

DAC's two tricks are kept: *factorised codes* (project the latent to a small code space, here
``codebook_dim`` = 8, before the lookup) and *l2-normalised lookup* (nearest neighbour of the
normalised vectors = highest cosine similarity), both of which keep codebook usage high. Gradients
pass the non-differentiable lookup with the straight-through estimator (van den Oord et al. 2017).
Shapes: D = input (latent) width, d = codebook_dim, n_q = number of codebooks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from torch import nn

from pyramid_cli.codec.layers import WNConv1d
from pyramid_cli.runtime.devices import normal_unless_meta


@dataclass
class QuantizerOutput:
    """What a residual quantiser returns.

    Attributes:
        z_q: (B, D, T) quantised latent (straight-through: gradients flow to the input).
        codes: (B, n_q, T) long code indices in [0, codebook_size).
        latents: (B, n_q * d, T) projected inputs of every stage (before the lookup).
        commitment_loss: scalar, pulls the encoder towards its codes (caller weights it, 0.25).
        codebook_loss: scalar, pulls the codes towards the encoder (caller weights it, 1.0).
        diversity_loss: scalar, summed over stages: how far the batch's soft code use is from
            uniform (``VectorQuantize.diversity``; off unless the caller weights it).
    """

    z_q: torch.Tensor
    codes: torch.Tensor
    latents: torch.Tensor
    commitment_loss: torch.Tensor
    codebook_loss: torch.Tensor
    diversity_loss: torch.Tensor


class StageOutput(NamedTuple):
    """One VQ stage's result (per batch item losses, as DAC, so that dropout can mask them)."""

    z_q: torch.Tensor  # (B, D, T)
    commitment_loss: torch.Tensor  # (B,)
    codebook_loss: torch.Tensor  # (B,)
    codes: torch.Tensor  # (B, T) long
    latents: torch.Tensor  # (B, d, T) projected input, before the lookup
    diversity_loss: torch.Tensor  # scalar, see VectorQuantize.diversity


@dataclass(frozen=True)
class CodebookUsage:
    """Use of one codebook over some span (since its last reseed, a logging window, an evaluation)."""

    used: int  # distinct codes seen
    perplexity: float  # exp of the usage entropy: the codebook's size when use is uniform, 0 when none counted
    total: int  # codes counted


def codebook_usage(counts: torch.Tensor) -> list[CodebookUsage]:
    """(n, K) (or (K,)) counts of each of K codes in n codebooks → each codebook's usage."""
    counts = counts.detach().double().reshape(-1, counts.shape[-1])
    totals = counts.sum(dim=1)
    p = counts / totals.clamp(min=1)[:, None]
    entropy = -(p * p.clamp(min=1e-300).log()).sum(dim=1)  # 0 log 0 = 0
    perplexity = torch.where(totals > 0, entropy.exp(), torch.zeros_like(entropy))
    used = (counts > 0).sum(dim=1)
    return [CodebookUsage(int(u), float(q), int(t))
            for u, q, t in zip(used.tolist(), perplexity.tolist(), totals.tolist(), strict=True)]


class VectorQuantize(nn.Module):
    """One factorised, cosine-lookup VQ stage: (B, D, T) → (B, D, T)."""

    code_counts: torch.Tensor  # (codebook_size,) uses of each entry since the last reseed

    def __init__(self, input_dim: int, codebook_size: int, codebook_dim: int, projection_bias: bool = True) -> None:
        super().__init__()
        self.codebook_size = codebook_size
        # Under cosine lookup a bias can dominate the projection and point every latent one way.
        self.in_proj = WNConv1d(input_dim, codebook_dim, kernel_size=1, bias=projection_bias)
        self.out_proj = WNConv1d(codebook_dim, input_dim, kernel_size=1)
        # Embedding's own init, except on the meta device (from_pretrained's shape probe).
        self.codebook = nn.Embedding(codebook_size, codebook_dim,
                                     _weight=normal_unless_meta(codebook_size, codebook_dim))
        # Training statistic, not a weight: kept out of checkpoints (persistent=False).
        self.register_buffer("code_counts", torch.zeros(codebook_size), persistent=False)

    def project_in(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, T) → (B, d, T) projected into the code space."""
        return self.in_proj(z)

    def forward(self, z: torch.Tensor) -> StageOutput:
        """Quantise ``z`` (B, D, T); see ``StageOutput`` for the shapes."""
        z_e = self.project_in(z)  # (B, d, T)
        similarity = self.similarity(z_e)  # (B*T, K)
        codes = similarity.argmax(dim=1).view(z_e.shape[0], z_e.shape[2])
        q = self.lookup(codes)  # (B, d, T), un-normalised entries as in DAC
        commitment = F.mse_loss(z_e, q.detach(), reduction="none").mean(dim=(1, 2))
        codebook = F.mse_loss(q, z_e.detach(), reduction="none").mean(dim=(1, 2))
        q = z_e + (q - z_e).detach()  # straight-through estimator
        diversity = self.diversity(similarity) if torch.is_grad_enabled() else similarity.new_zeros(())
        return StageOutput(self.out_proj(q), commitment, codebook, codes, z_e, diversity)

    def similarity(self, z_e: torch.Tensor) -> torch.Tensor:
        """(B, d, T) projected latents → (B*T, K) cosine similarity to every entry."""
        flat = F.normalize(z_e.transpose(1, 2).reshape(-1, z_e.shape[1]), dim=1)  # (B*T, d)
        return flat @ F.normalize(self.codebook.weight, dim=1).t()

    def nearest_codes(self, z_e: torch.Tensor) -> torch.Tensor:
        """(B, d, T) projected latents → (B, T) indices of the most cosine-similar entries."""
        return self.similarity(z_e).argmax(dim=1).view(z_e.shape[0], z_e.shape[2])

    @staticmethod
    def diversity(similarity: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
        """1 - H(p̄) / log K for p̄ the batch mean of softmax(similarity / temperature): 0 when the
        batch's soft code use is uniform, 1 when one code takes it all.

        A collapsed stage (every latent pointing one way) gets no gradient towards other codes from
        the hard lookup; this term gives one, to the latents and the entries alike (wav2vec 2.0's
        codebook diversity loss, Baevski et al. 2020, on cosine similarities).
        """
        mean = (similarity.float() / temperature).softmax(dim=1).mean(dim=0)
        entropy = -(mean * mean.clamp_min(1e-12).log()).sum()
        return 1.0 - entropy / math.log(similarity.shape[1])

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T) indices → (B, d, T) codebook entries."""
        return self.codebook(codes).transpose(1, 2)

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T) indices → (B, D, T) this stage's contribution to z_q."""
        return self.out_proj(self.lookup(codes))

    @torch.no_grad()
    def record_usage(self, codes: torch.Tensor) -> None:
        """Add the (any-shape) indices to the usage counts."""
        self.code_counts += torch.bincount(codes.reshape(-1), minlength=self.codebook_size).to(
            self.code_counts
        )

    def usage_stats(self) -> CodebookUsage:
        """Distinct codes used and perplexity (exp of the usage entropy) since the last reseed."""
        return codebook_usage(self.code_counts)[0]

    @torch.no_grad()
    def reseed_dead_codes(self, recent_inputs: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Replace the entries unused since the last reseed by random recent projected inputs.

        A standard remedy for dead codes (e.g. Jukebox, Dhariwal et al. 2020; Zeghidour et al. 2021).
        Resets the usage counts.

        Args:
            recent_inputs: (B, D, T) recent inputs of this stage (encoder outputs or residuals).
            generator: optional generator for the random choice (on the inputs' device).

        Returns:
            The number of entries replaced.
        """
        dead = (self.code_counts == 0).nonzero().squeeze(1)
        if dead.numel() > 0:
            z_e = self.project_in(recent_inputs)
            pool = z_e.transpose(1, 2).reshape(-1, z_e.shape[1])  # (B*T, d)
            pick = torch.randint(0, pool.shape[0], (dead.numel(),), generator=generator, device=pool.device)
            self.codebook.weight.data[dead] = pool[pick].to(self.codebook.weight.dtype)
        self.code_counts.zero_()
        return int(dead.numel())


class ScalarQuantize(VectorQuantize):
    """One finite-scalar-quantisation stage (FSQ; Mentzer et al., "Finite Scalar Quantization: VQ-VAE
    Made Simple", ICLR 2024): (B, D, T) → (B, D, T), a drop-in for ``VectorQuantize``.

    The latent is projected to len(levels) dimensions, each bounded with tanh to ``levels[j]``
    values and rounded (straight-through); the code is the mixed-radix number of the rounded
    values, so levels (4, 4, 4, 4, 4) give exactly 1,024 codes. There is no codebook to learn, so
    no codebook or commitment loss and no dead entries. It can still collapse when its inputs do
    (see ``project_in``): without the standardisation, it fell to one code within 100 steps, as
    the cosine-lookup VQ did.
    """

    levels: torch.Tensor  # (d,) values per dimension
    basis: torch.Tensor  # (d,) place value of each dimension in the code

    def __init__(self, input_dim: int, levels: tuple[int, ...], projection_bias: bool = True) -> None:
        size = math.prod(levels)
        super().__init__(input_dim, size, len(levels), projection_bias)
        del self.codebook  # the grid is the codebook
        self.standardise = nn.BatchNorm1d(len(levels), affine=False, momentum=0.01)
        levels_t = torch.tensor(levels, dtype=torch.float32)
        basis = torch.tensor([math.prod(levels[:i]) for i in range(len(levels))], dtype=torch.float32)
        self.register_buffer("levels", levels_t, persistent=False)
        self.register_buffer("basis", basis, persistent=False)

    def project_in(self, z: torch.Tensor) -> torch.Tensor:
        """(B, D, T) → (B, d, T): the projection, standardised per dimension over batch and time.

        Why: music's log spectra are mostly a static shape, so at initialisation the encoder's
        frames differ by a few percent of their common part; that common part pushed the tanh
        bound into saturation within 10 steps and every frame fell into one grid cell, with the
        encoder's gradient gone (measured: 1 code per level after 100 steps, with layer norm too).
        Batch statistics remove the common part in training; the running averages, a fixed affine
        map, are used at inference (so chunked encoding still equals whole-signal encoding).
        """
        return self.standardise(self.in_proj(z))

    def _bound(self, z_e: torch.Tensor) -> torch.Tensor:
        """(B, d, T) → values in (-levels/2, levels/2) that round to levels[j] integers per dimension."""
        levels = self.levels.view(1, -1, 1)
        half = (levels - 1) * (1 + 1e-3) / 2
        offset = (levels % 2 == 0).to(z_e.dtype) * 0.5  # even level counts: a half-step grid
        shift = torch.atanh(offset / half)
        # Two levels: the paper's bound above puts the one cell boundary at z = -atanh(0.5 / 0.5005)
        # = -3.8, so standardised inputs almost all round to one value; centre the boundary at 0.
        binary = levels == 2
        half = torch.where(binary, 1 - 1e-3, half)
        shift = torch.where(binary, 0.0, shift)
        return torch.tanh(z_e + shift) * half - offset

    def forward(self, z: torch.Tensor) -> StageOutput:
        """Quantise ``z`` (B, D, T); losses are zeros (FSQ has none)."""
        z_e = self.project_in(z)  # (B, d, T)
        bounded = self._bound(z_e)
        rounded = bounded + (bounded.round() - bounded).detach()  # straight-through
        codes = self._codes(rounded.detach())
        if self.training:
            # Half the batch sees uniform rounding noise instead of rounding (Ballé et al., ICLR
            # 2017's proxy), so the decoder learns from what varies by more than a grid step. The
            # measured runs trained with it; on its own it did not stop the collapse (the
            # standardisation in project_in did), and it has not been measured without.
            noisy = torch.rand(z.shape[0], 1, 1, device=z.device) < 0.5
            noise = torch.rand_like(bounded) - 0.5
            rounded = torch.where(noisy, bounded + noise, rounded)
        zeros = z.new_zeros(z.shape[0])
        return StageOutput(self.out_proj(self._normalise(rounded)), zeros, zeros, codes, z_e, z.new_zeros(()))

    def _normalise(self, rounded: torch.Tensor) -> torch.Tensor:
        return rounded / (self.levels.view(1, -1, 1) // 2)

    def _codes(self, rounded: torch.Tensor) -> torch.Tensor:
        digits = rounded + self.levels.view(1, -1, 1) // 2  # 0 .. levels-1
        return (digits * self.basis.view(1, -1, 1)).sum(dim=1).round().long()  # (B, T)

    def nearest_codes(self, z_e: torch.Tensor) -> torch.Tensor:
        return self._codes(self._bound(z_e).round())

    def lookup(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, T) indices → (B, d, T) normalised grid points."""
        digits = (codes.unsqueeze(1).float() / self.basis.view(1, -1, 1)).floor() % self.levels.view(1, -1, 1)
        return self._normalise(digits - self.levels.view(1, -1, 1) // 2)

    def reseed_dead_codes(self, recent_inputs: torch.Tensor, generator: torch.Generator | None = None) -> int:
        """Nothing to reseed (no learned entries); resets the usage counts."""
        self.code_counts.zero_()
        return 0


class ResidualVectorQuantize(nn.Module):
    """``n_codebooks`` VQ stages, each quantising what the previous ones left (DAC, SoundStream).

    Quantizer dropout (DAC §3.2): during training, a ``quantizer_dropout`` fraction of the batch
    items keeps only a random number 1..n_q of stages, so that fewer codebooks still decode well.
    """

    def __init__(
        self,
        input_dim: int,
        n_codebooks: int,
        codebook_size: int,
        codebook_dim: int,
        quantizer_dropout: float = 0.0,
        projection_bias: bool = True,
        fsq_levels: tuple[int, ...] = (),
    ) -> None:
        """``fsq_levels`` non-empty: FSQ stages (``ScalarQuantize``) with that grid instead of VQ."""
        super().__init__()
        self.n_codebooks = n_codebooks
        self.codebook_size = codebook_size
        self.quantizer_dropout = quantizer_dropout
        self.quantizers = nn.ModuleList(
            ScalarQuantize(input_dim, fsq_levels, projection_bias) if fsq_levels
            else VectorQuantize(input_dim, codebook_size, codebook_dim, projection_bias)
            for _ in range(n_codebooks)
        )

    @property
    def stages(self) -> list[VectorQuantize]:
        """The VQ stages, typed (``nn.ModuleList`` items are plain modules to a type checker)."""
        return [cast(VectorQuantize, q) for q in self.quantizers]

    def forward(
        self, z: torch.Tensor, n_quantizers: int | None = None, dropout: bool | None = None
    ) -> QuantizerOutput:
        """Quantise ``z`` (B, D, T) with all stages (or the first ``n_quantizers`` out of training).

        Args:
            z: (B, D, T) latent.
            n_quantizers: stages to use (default all); in training it caps the dropout draw.
            dropout: apply quantizer dropout and count code usage (training's behaviour); defaults
                to ``self.training``. Not ``train``, which would shadow ``nn.Module.train``.
        """
        training = self.training if dropout is None else dropout
        batch = z.shape[0]
        n_q = self.n_codebooks if n_quantizers is None else min(n_quantizers, self.n_codebooks)
        kept = torch.full((batch,), n_q, device=z.device)  # stages kept per batch item
        if training and self.quantizer_dropout > 0:
            n_drop = int(batch * self.quantizer_dropout)
            kept[:n_drop] = torch.randint(1, n_q + 1, (n_drop,), device=z.device)
        stages = self.n_codebooks if training else n_q  # DAC runs every stage in training
        z_q = torch.zeros_like(z)
        residual = z
        commitment = z.new_zeros(())
        codebook = z.new_zeros(())
        diversity = z.new_zeros(())
        codes, latents = [], []
        for i, quantizer in enumerate(self.stages[:stages]):
            z_q_i, commit_i, book_i, codes_i, z_e_i, diversity_i = quantizer(residual)
            diversity = diversity + diversity_i
            mask = (i < kept).to(z.dtype)  # (B,)
            z_q = z_q + z_q_i * mask[:, None, None]
            residual = residual - z_q_i
            commitment = commitment + (commit_i * mask).mean()
            codebook = codebook + (book_i * mask).mean()
            if training:
                quantizer.record_usage(codes_i[mask.bool()])
            codes.append(codes_i)
            latents.append(z_e_i)
        return QuantizerOutput(
            z_q=z_q,
            codes=torch.stack(codes, dim=1),
            latents=torch.cat(latents, dim=1),
            commitment_loss=commitment,
            codebook_loss=codebook,
            diversity_loss=diversity,
        )

    def from_codes(self, codes: torch.Tensor) -> torch.Tensor:
        """(B, n, T) codes of the first n ≤ n_codebooks stages → (B, D, T) z_q."""
        if not 1 <= codes.shape[1] <= self.n_codebooks:
            raise ValueError(f"got {codes.shape[1]} codebooks, this quantizer has {self.n_codebooks}")
        stages = self.stages
        z_q = stages[0].from_codes(codes[:, 0])
        for i in range(1, codes.shape[1]):
            z_q = z_q + stages[i].from_codes(codes[:, i])
        return z_q

    def usage_stats(self) -> list[CodebookUsage]:
        """Usage of each stage's codebook since its last reseed."""
        return [q.usage_stats() for q in self.stages]

    @torch.no_grad()
    def reseed_dead_codes(
        self, recent_latents: torch.Tensor, generator: torch.Generator | None = None
    ) -> int:
        """Reseed every stage's dead entries from the residual that stage sees for ``recent_latents``.

        Args:
            recent_latents: (B, D, T) recent inputs of this quantizer (encoder outputs).

        Returns:
            The number of entries replaced over all stages.
        """
        residual = recent_latents
        replaced = 0
        for quantizer in self.stages:
            replaced += quantizer.reseed_dead_codes(residual, generator=generator)
            # Residual after the reseed: what the next stage will see from now on.
            residual = residual - quantizer.from_codes(quantizer.nearest_codes(quantizer.project_in(residual)))
        return replaced
