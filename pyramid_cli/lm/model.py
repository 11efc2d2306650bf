"""The pyramid LM: a GPT-2-style decoder (pre-norm, causal by layout, rotary positions) with an
explicit key/value cache, in the shape of nanoGPT's ``model.py``.

Positions are rotary (RoPE, Su et al. 2021) rather than learned: attention scores then depend
only on the distance between two tokens, so a model trained on short windows scores the same
distances at minute 3 of a piece as at second 3. A token's input embedding is its code plus its
stream (level and codebook), since the same 1024 code ids are shared by every level.

Attention follows the layout (``TokenSequence.ranges``): training passes the dense (L, L) mask;
generation passes the key slots each query may see, read from a ``KVCache`` that ``forward``
fills and returns (EnCodec's ``LMModel.forward(indices, states, offset)`` pattern).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pyramid_cli.errors import FormatError
from pyramid_cli.hub.files import (
    WEIGHTS_NAME,
    check_weight_shapes,
    read_model_config,
    read_weights,
    write_model_folder,
)
from pyramid_cli.hub.identity import CodecIdentity, check_codec_identity
from pyramid_cli.lm.config import LMConfig
from pyramid_cli.runtime.devices import normal_unless_meta


def rotary(x: torch.Tensor, positions: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate channel pairs of ``x`` (B, H, T, hd) by ``positions`` (T,) or (B, T) x frequencies."""
    half = x.shape[-1] // 2
    freqs = base ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    angles = positions.to(torch.float32)[..., None] * freqs  # (T, hd/2) or (B, T, hd/2)
    if angles.dim() == 3:
        angles = angles[:, None]  # (B, 1, T, hd/2): the same rotation for every head
    cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


@dataclass
class KVCache:
    """Keys and values for every slot of a sequence: one (B, H, L, hd) tensor per layer each.

    One tensor per layer rather than one stacked (n_layer, ...) tensor: a compiled step then writes
    each layer's new slot in place, where a write into a view of a stacked tensor compiles to a
    copy of the whole cache at every step.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @classmethod
    def empty(cls, config: LMConfig, batch: int, length: int, device: torch.device | str = "cpu",
              dtype: torch.dtype = torch.float32) -> KVCache:
        shape = (batch, config.n_head, length, config.d_model // config.n_head)
        return cls([torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)],
                   [torch.zeros(shape, device=device, dtype=dtype) for _ in range(config.n_layer)])

    @property
    def dtype(self) -> torch.dtype:
        return self.keys[0].dtype


class CausalSelfAttention(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float, rope_base: float) -> None:
        super().__init__()
        self.n_head = n_head
        self.rope_base = rope_base
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.dropout = dropout

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None = None, layer: int = 0, start: int | torch.Tensor = 0,
                key_slots: torch.Tensor | None = None) -> torch.Tensor:
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=2)
        q, k, v = (t.view(B, T, self.n_head, C // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd)
        q = rotary(q, positions, self.rope_base)
        k = rotary(k, positions, self.rope_base)
        if cache is not None:
            # The cache may be kept in a lower precision than these activations (autocast decoding).
            k, v = k.to(cache.dtype), v.to(cache.dtype)
            if isinstance(start, torch.Tensor):
                # (T,) slot indices held in a tensor: the write has the same shape at every step, so
                # a compiled or CUDA-graph decode step need not be specialised on the step number.
                cache.keys[layer].index_copy_(2, start, k)
                cache.values[layer].index_copy_(2, start, v)
            else:
                cache.keys[layer][:, :, start:start + T] = k
                cache.values[layer][:, :, start:start + T] = v
            if key_slots is not None:  # only the slots the layout lets these queries see
                k = cache.keys[layer].index_select(2, key_slots)
                v = cache.values[layer].index_select(2, key_slots)
            q = q.to(k.dtype)
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


class MLP(nn.Module):
    def __init__(self, d_model: int, dropout: float) -> None:
        super().__init__()
        self.up = nn.Linear(d_model, 4 * d_model)
        self.down = nn.Linear(4 * d_model, d_model)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.down(F.gelu(self.up(x))))


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int, dropout: float, rope_base: float) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(d_model)
        self.attn = CausalSelfAttention(d_model, n_head, dropout, rope_base)
        self.ln_2 = nn.LayerNorm(d_model)
        self.mlp = MLP(d_model, dropout)

    def forward(self, x: torch.Tensor, positions: torch.Tensor, mask: torch.Tensor | None,
                cache: KVCache | None, layer: int, start: int | torch.Tensor,
                key_slots: torch.Tensor | None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), positions, mask, cache, layer, start, key_slots)
        return x + self.mlp(self.ln_2(x))


class PyramidLM(nn.Module):
    """GPT over laid-out pyramid tokens; see the module docstring."""

    def __init__(self, config: LMConfig) -> None:
        super().__init__()
        self.config = config
        # Embedding's own init, except on the meta device (from_pretrained's shape probe; see normal_unless_meta).
        self.token_embedding = nn.Embedding(config.vocab_size, config.d_model,
                                            _weight=normal_unless_meta(config.vocab_size, config.d_model))
        self.stream_embedding = nn.Embedding(config.n_streams, config.d_model,
                                             _weight=normal_unless_meta(config.n_streams, config.d_model))
        self.dropout = nn.Dropout(config.dropout)
        self.blocks = nn.ModuleList(
            Block(config.d_model, config.n_head, config.dropout, config.rope_base) for _ in range(config.n_layer))
        self.ln_f = nn.LayerNorm(config.d_model)
        self.head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if self.head.weight.is_meta:  # a shape probe: nothing to initialise (normal_ would import torch._dynamo)
            return
        self.apply(self._init_weights)
        for name, parameter in self.named_parameters():
            if name.endswith("proj.weight") or name.endswith("down.weight"):
                # GPT-2: scale the residual projections by 1/sqrt(2 * n_layer).
                nn.init.normal_(parameter, mean=0.0, std=0.02 / math.sqrt(2 * config.n_layer))

    @staticmethod
    def _init_weights(module: nn.Module) -> None:
        if isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, streams: torch.Tensor,
                mask: torch.Tensor | None = None, cache: KVCache | None = None, start: int | torch.Tensor = 0,
                key_slots: torch.Tensor | None = None) -> tuple[torch.Tensor, KVCache | None]:
        """Logits for the next token after each input token.

        Args:
            tokens: (B, T) token ids (no -1: unknown tokens are never fed).
            positions: (T,) or (B, T) rotary positions; streams: (B, T) or (T,) stream ids.
            mask: (T, T) or (B, 1, T, T) bool, True = may attend (training); or (T, K) against
                ``key_slots`` when cached; None = every key visible.
            cache: filled at slots ``start:start+T`` (``start`` an int) or at the (T,) slots of a
                ``start`` tensor, and returned; None for training. Its dtype may be lower than the
                activations' (keys and values are cast on the way in, queries to match).
            key_slots: (K,) cache slots the queries attend to (default: all written so far are
                ignored and only this chunk is seen, as in training).

        Returns:
            (logits (B, T, vocab_size), cache).
        """
        x = self.dropout(self.token_embedding(tokens) + self.stream_embedding(streams))
        for layer, block in enumerate(self.blocks):
            x = block(x, positions, mask, cache, layer, start, key_slots)
        return self.head(self.ln_f(x)), cache

    # ---- checkpoints: config.json + model.safetensors, no pickles -------------------------------

    def save_pretrained(self, folder: str | Path, fp16: bool = False) -> None:
        """Write config.json and model.safetensors (safetensors only; ``fp16`` for release bundles)."""
        metadata = {"model_type": self.config.model_type, "name": self.config.name}
        write_model_folder(folder, self.config.to_dict(), self.state_dict(), metadata, fp16)

    @classmethod
    def from_pretrained(cls, folder: str | Path, device: torch.device | str = "cpu") -> PyramidLM:
        """Load a folder written by ``save_pretrained`` onto ``device`` (weights cast to float32)."""
        weights_path = Path(folder) / WEIGHTS_NAME
        config = LMConfig.from_dict(read_model_config(folder, "LM"))
        with torch.device("meta"):  # the shapes the config implies, checked before anything is allocated
            probe = cls(config)
        check_weight_shapes(weights_path, {k: tuple(v.shape) for k, v in probe.state_dict().items()}, "LM")
        state = read_weights(folder, "LM")
        model = cls(config)
        try:
            model.load_state_dict({k: v.float() for k, v in state.items()})
        except RuntimeError as exc:
            first_line = str(exc).splitlines()[0]
            raise FormatError(f"{weights_path}: weights do not match config.json ({first_line})") from None
        return model.to(device).eval()


def check_codec(config: LMConfig, codec: CodecIdentity, given_as: str = "the codec given is") -> None:
    """Refuse tokens of a codec other than the one the LM was trained on, naming both
    (``hub.identity.check_codec_identity``; ``codec.aliases`` are accepted too).

    Raises:
        CodecMismatchError: "the LM X was trained on tokens of A@1234abcd; the codec given is B@9876fedc".
    """
    check_codec_identity((config.codec_name, config.codec_hash), codec,
                         f"the LM {config.name} was trained on tokens of", given_as)
