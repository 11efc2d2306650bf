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
