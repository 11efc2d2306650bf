"""Choosing the device (``pyramid_cli.runtime.devices``): ``--device auto|cpu|cuda[:N]|mps``."""

from __future__ import annotations

import pytest
import torch

from pyramid_cli.cli import error_message
from pyramid_cli.errors import UsageError
from pyramid_cli.runtime.devices import resolve_device


def test_cpu_and_auto():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(" CPU ") == torch.device("cpu")
    auto = resolve_device("auto")
    assert auto.type == ("cuda" if torch.cuda.is_available() else auto.type)
    if not torch.cuda.is_available() and not torch.backends.mps.is_available():
        assert auto == torch.device("cpu")


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "cuda:-1", "tpu", ""])
def test_unknown_devices_are_usage_errors(spec: str):
    with pytest.raises(UsageError, match="unknown device"):
        resolve_device(spec)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on machines without CUDA")
def test_cuda_without_cuda_is_a_clear_usage_error():
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device("cuda")
    with pytest.raises(UsageError, match="CUDA is not available"):
        resolve_device("cuda:1")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_index_out_of_range():
    count = torch.cuda.device_count()
    assert resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(UsageError, match=f"has {count} CUDA device"):
        resolve_device(f"cuda:{count}")


@pytest.mark.skipif(torch.backends.mps.is_available(), reason="checks the message on machines without MPS")
def test_mps_without_mps():
    with pytest.raises(UsageError, match="MPS is not available"):
        resolve_device("mps")


def test_a_device_error_names_the_setting_and_the_cli_its_flag():
    with pytest.raises(UsageError) as error:
        resolve_device("tpu")
    assert error.value.option == "device" and error_message(error.value).startswith("--device tpu: unknown device")


def test_cpu_bf16_decoding_only_on_cpu_and_not_when_turned_off(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyramid_cli.runtime import devices

    monkeypatch.setattr(devices, "_cpu_has_native_bf16", lambda: True)
    assert devices.cpu_bf16_decoding(torch.device("cpu"))
    assert not devices.cpu_bf16_decoding(torch.device("meta"))
    monkeypatch.setenv(devices.BF16_DECODER_ENV, "0")
    assert not devices.cpu_bf16_decoding(torch.device("cpu"))
    monkeypatch.delenv(devices.BF16_DECODER_ENV)
    monkeypatch.setattr(devices, "_cpu_has_native_bf16", lambda: False)
    assert not devices.cpu_bf16_decoding(torch.device("cpu"))


def test_bf16_decoding_is_close_to_float32_and_codes_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyramid_cli.codec import CodecConfig, PyramidCodec
    from pyramid_cli.runtime import devices

    torch.manual_seed(0)
    config = CodecConfig(name="tiny", architecture="spectral", encoder_rates=(256,), encoder_dim=16, decoder_dim=32,
                         latent_dim=16, encoder_layers=1, decoder_layers=2, griffin_lim_iters=0,
                         fsq_levels=(4, 4, 4, 4, 4), harmonics=4)
    model = PyramidCodec(config).eval()
    wav = 0.1 * torch.randn(1, 1, 22050)
    results = {}
    for bf16 in (False, True):
        monkeypatch.setattr(devices, "_cpu_has_native_bf16", lambda value=bf16: value)
        with torch.inference_mode():
            codes = model.encode(wav)
            results[bf16] = (codes, model.decode(codes, length=wav.shape[-1]))
    assert all(torch.equal(a, b) for a, b in zip(results[False][0], results[True][0], strict=True))
    assert results[True][1].dtype == torch.float32
    assert not torch.equal(results[True][1], results[False][1])  # the bf16 path did run
    torch.testing.assert_close(results[True][1], results[False][1], atol=0.02, rtol=0.05)
