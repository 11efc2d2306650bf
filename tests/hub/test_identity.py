"""The one codec-identity check (hub.identity) and the config header every model config carries (hub.files)."""

from __future__ import annotations

import pytest

from pyramid_cli.codec.config import CodecConfig
from pyramid_cli.errors import CodecMismatchError, FormatError
from pyramid_cli.hub.files import CONFIG_VERSION, check_model_header
from pyramid_cli.hub.identity import CodecIdentity, check_codec_identity
from pyramid_cli.lm.config import LMConfig

MADE = ("pyramid-22k-p111", "abc12345" + "0" * 56)


def check(given: CodecIdentity) -> None:
    check_codec_identity(MADE, given, "song.pyr was made with", "the codec given is")


def test_same_codec_passes_whatever_the_hex_case_or_an_alias() -> None:
    check(CodecIdentity("pyramid-22k-p111", "ABC12345" + "0" * 56))
    check(CodecIdentity("pyramid-22k-p111", "ffff", aliases=(MADE[1],)))


def test_another_codec_is_refused_naming_both() -> None:
    with pytest.raises(CodecMismatchError) as info:
        check(CodecIdentity("dac-22k-n2", "def67890" * 8))
    assert str(info.value) == "song.pyr was made with pyramid-22k-p111@abc12345; the codec given is dac-22k-n2@def67890"
    with pytest.raises(CodecMismatchError, match="@abc123450; .*@abc123451"):  # same name, other weights
        check(CodecIdentity("pyramid-22k-p111", "abc123451" + "0" * 55))
    with pytest.raises(CodecMismatchError, match="p111@abc12345; the codec given is p555@abc12345$"):
        check(CodecIdentity("p555", MADE[1]))


def test_configs_carry_type_and_version() -> None:
    codec = CodecConfig().to_dict()
    assert (codec["model_type"], codec["version"]) == ("pyramid-codec", CONFIG_VERSION)
    assert LMConfig().to_dict()["version"] == CONFIG_VERSION


def test_a_config_without_type_or_version_is_read_as_the_current_version() -> None:
    old = {key: value for key, value in CodecConfig().to_dict().items() if key not in ("model_type", "version")}
    assert CodecConfig.from_dict(old) == CodecConfig()
    assert check_model_header({}, "lm", "LM config") == {"model_type": "pyramid-lm", "version": CONFIG_VERSION}


def test_a_newer_version_or_another_type_is_refused() -> None:
    newer = {**CodecConfig().to_dict(), "version": CONFIG_VERSION + 1}
    with pytest.raises(FormatError, match="newer than this pyramid reads"):
        CodecConfig.from_dict(newer)
    with pytest.raises(FormatError, match="model_type is 'pyramid-lm', not 'pyramid-codec'"):
        CodecConfig.from_dict({**CodecConfig().to_dict(), "model_type": "pyramid-lm"})
    with pytest.raises(FormatError, match="version must be a positive integer"):
        LMConfig.from_dict({**LMConfig().to_dict(), "version": "2"})
