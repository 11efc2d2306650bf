"""Building blocks of the DAC-style backbone (Kumar et al. 2023, descript-audio-codec layers.py).

Every layer takes plain ints, never a config, so each can be built and tested alone. All convs
are weight-normalised through ``torch.nn.utils.parametrizations.weight_norm`` (the
state-dict-friendly API); ``fold_weight_norm`` bakes the weights in for faster inference.
Shapes are (B, C, T) throughout.
"""

from __future__ import annotations

import math
from typing import TypeVar

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils.parametrizations import weight_norm


def WNConv1d(  # noqa: N802 - named like the class it returns, as in DAC
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    dilation: int = 1,
    bias: bool = True,
) -> nn.Conv1d:
    """A weight-normalised ``nn.Conv1d``."""
    conv = nn.Conv1d(
        in_channels, out_channels, kernel_size, stride=stride, padding=padding, dilation=dilation, bias=bias
    )
    return _weight_norm(conv)


def WNConvTranspose1d(  # noqa: N802
    in_channels: int,
    out_channels: int,
    kernel_size: int,
    stride: int = 1,
    padding: int = 0,
    output_padding: int = 0,
) -> nn.ConvTranspose1d:
    """A weight-normalised ``nn.ConvTranspose1d``."""
    conv = nn.ConvTranspose1d(
        in_channels, out_channels, kernel_size, stride=stride, padding=padding, output_padding=output_padding
    )
    return _weight_norm(conv)


ConvT = TypeVar("ConvT", nn.Conv1d, nn.ConvTranspose1d)


def _weight_norm(conv: ConvT) -> ConvT:
    """``weight_norm(conv)``, except on the meta device, where a model is built only for its shapes
    (``parametrized_shapes``): the parametrization's norm has no meta kernel there, and its Python
    fallback imports ``torch._dynamo``, 1.4 s at the start of every command that loads a codec."""
    if conv.weight.is_meta:
        conv.weight_norm_deferred = True  # type: ignore[assignment]  # a plain attribute, not a submodule
        return conv
    return weight_norm(conv)


def parametrized_shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
    """The state-dict shapes of ``module`` as a weight-normalised model stores them, for a model
    built on the meta device (``_weight_norm`` left its convs plain): ``X.weight`` becomes
    ``X.parametrizations.weight.original0`` (the norms, one per output channel) and ``original1``."""
    shapes = {key: tuple(value.shape) for key, value in module.state_dict().items()}
    for name, sub in module.named_modules():
        if getattr(sub, "weight_norm_deferred", False):
            prefix = f"{name}." if name else ""
            weight = shapes.pop(f"{prefix}weight")
            shapes[f"{prefix}parametrizations.weight.original0"] = (weight[0],) + (1,) * (len(weight) - 1)
            shapes[f"{prefix}parametrizations.weight.original1"] = weight
    return shapes


def fold_weight_norm(module: nn.Module) -> nn.Module:
    """Replace every weight-norm parametrization under ``module`` by its current weight, in place.

    The folded model computes the same function without recomputing ``g * v / |v|`` at each
    call; its state dict has plain ``weight`` keys instead of ``parametrizations.weight.*``.
    """
    for sub in module.modules():
        if parametrize.is_parametrized(sub, "weight"):
            parametrize.remove_parametrizations(sub, "weight", leave_parametrized=True)
    return module


def is_weight_norm_folded(module: nn.Module) -> bool:
    """True when no weight-norm parametrization is left under ``module``."""
    return not any(parametrize.is_parametrized(sub) for sub in module.modules())


def strided_conv(in_dim: int, out_dim: int, stride: int) -> nn.Conv1d:
    """Down-sample by exactly ``stride`` (T → T / stride when T is a multiple), DAC's kernel 2*stride."""
    return WNConv1d(in_dim, out_dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2))


def strided_conv_transpose(in_dim: int, out_dim: int, stride: int) -> nn.ConvTranspose1d:
    """Up-sample by exactly ``stride`` (T → T * stride); output_padding fixes odd strides."""
    return WNConvTranspose1d(
        in_dim,
        out_dim,
        kernel_size=2 * stride,
        stride=stride,
        padding=math.ceil(stride / 2),
        output_padding=stride % 2,
    )


class Snake1d(nn.Module):
    """Snake activation x + sin²(αx)/α with one learnable α per channel (Ziyin et al. 2020, DAC).

    Plain PyTorch (DAC jit-scripts it); 1e-9 guards α → 0. The activation is memory-bound at
    audio rate, so without autograd it allocates one tensor instead of four.
    """

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) → (B, C, T)."""
        inverse = (self.alpha + 1e-9).reciprocal()
        if torch.is_grad_enabled():
            return torch.addcmul(x, inverse, torch.sin(self.alpha * x).square())
        out = torch.mul(x, self.alpha)
        return out.sin_().square_().mul_(inverse).add_(x)

    def forward_inplace(self, x: torch.Tensor) -> torch.Tensor:
        """Like ``forward`` but overwrites ``x`` when autograd is off (for tensors the caller owns)."""
        if torch.is_grad_enabled():
            return self(x)
        return x.add_(torch.mul(x, self.alpha).sin_().square_().mul_((self.alpha + 1e-9).reciprocal()))


class Chain(nn.Sequential):
    """``nn.Sequential`` whose Snakes overwrite intermediate tensors at inference (same state dict).

    Only tensors created inside the chain are overwritten, never the caller's input, and only
    when autograd is off; this halves the memory traffic of long inputs on a CPU.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        owned = False
        inplace = not torch.is_grad_enabled()
        for layer in self:
            if inplace and owned and isinstance(layer, Snake1d):
                x = layer.forward_inplace(x)
            else:
                x = layer(x)
                owned = True
        return x


class ResidualUnit(nn.Module):
    """Snake → 7-tap dilated conv → Snake → 1×1 conv, added to the input (DAC)."""

    def __init__(self, dim: int, dilation: int = 1) -> None:
        super().__init__()
        pad = (7 - 1) * dilation // 2
        self.block = Chain(
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=7, dilation=dilation, padding=pad),
            Snake1d(dim),
            WNConv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, T) → (B, C, T)."""
        y = self.block(x)
        # The padding keeps the length; crop symmetrically anyway, as DAC does, should it differ.
        crop = (x.shape[-1] - y.shape[-1]) // 2
        if crop > 0:
            x = x[..., crop : crop + y.shape[-1]]
        return x + y if torch.is_grad_enabled() else y.add_(x)


def residual_stack(dim: int, n_units: int = 3) -> list[nn.Module]:
    """``n_units`` residual units with dilations 1, 3, 9, 27, … (the first three are DAC's)."""
    return [ResidualUnit(dim, dilation=3**i) for i in range(n_units)]


class EncoderBlock(nn.Module):
    """Three residual units then a strided conv: (B, in_dim, T) → (B, out_dim, T / stride).

    DAC's block doubles the channels (out_dim = 2 * in_dim); the pyramid blocks keep them.
    """

    def __init__(self, in_dim: int, out_dim: int, stride: int, n_units: int = 3) -> None:
        super().__init__()
        self.block = Chain(
            *residual_stack(in_dim, n_units), Snake1d(in_dim), strided_conv(in_dim, out_dim, stride)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DecoderBlock(nn.Module):
    """Snake, transposed conv, three residual units: (B, in_dim, T) → (B, out_dim, T * stride)."""

    def __init__(self, in_dim: int, out_dim: int, stride: int, n_units: int = 3) -> None:
        super().__init__()
        self.block = Chain(
            Snake1d(in_dim),
            strided_conv_transpose(in_dim, out_dim, stride),
            *residual_stack(out_dim, n_units),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)
