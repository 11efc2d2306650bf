"""The codec's building blocks (``pyramid_cli.codec.layers``): exact strides, Snake, the in-place
inference chain, and weight-norm folding that changes no output."""

from __future__ import annotations

import pytest
import torch

from pyramid_cli.codec.layers import (
    Chain,
    DecoderBlock,
    EncoderBlock,
    Snake1d,
    fold_weight_norm,
    is_weight_norm_folded,
    strided_conv,
    strided_conv_transpose,
)


@pytest.mark.parametrize("stride", [2, 3, 4, 8])
def test_strided_convs_change_the_length_by_exactly_the_stride(stride: int) -> None:
    x = torch.randn(2, 4, 12 * stride)
    assert strided_conv(4, 6, stride)(x).shape == (2, 6, 12)
    assert strided_conv_transpose(4, 6, stride)(x).shape == (2, 6, 12 * stride * stride)


def test_snake_is_x_plus_sin_squared_over_alpha_with_and_without_autograd() -> None:
    snake = Snake1d(3)
    with torch.no_grad():
        snake.alpha.copy_(torch.tensor([0.5, 1.0, 2.0]).view(1, 3, 1))
    x = torch.randn(2, 3, 16)
    expected = x + torch.sin(snake.alpha * x) ** 2 / (snake.alpha + 1e-9)
    torch.testing.assert_close(snake(x), expected)
    with torch.no_grad():
        torch.testing.assert_close(snake(x), expected)
        torch.testing.assert_close(snake.forward_inplace(x.clone()), expected)


def test_the_inference_chain_never_overwrites_its_input_and_equals_the_plain_one() -> None:
    torch.manual_seed(0)
    chain = Chain(EncoderBlock(4, 8, 2), Snake1d(8), DecoderBlock(8, 4, 2), Snake1d(4))
    x = torch.randn(1, 4, 64)
    kept = x.clone()
    trained = chain(x)
    with torch.no_grad():
        inferred = chain(x)
    torch.testing.assert_close(inferred, trained.detach())
    assert torch.equal(x, kept)


def test_folding_weight_norm_keeps_the_output() -> None:
    torch.manual_seed(0)
    block = EncoderBlock(4, 8, 2)
    x = torch.randn(1, 4, 32)
    with torch.no_grad():
        before = block(x)
        assert not is_weight_norm_folded(block)
        fold_weight_norm(block)
        assert is_weight_norm_folded(block)
        torch.testing.assert_close(block(x), before)
