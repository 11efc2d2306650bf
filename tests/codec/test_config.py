import json

import pytest

from pyramid_cli.codec import PRESETS, CodecConfig, preset
from pyramid_cli.errors import FormatError, UsageError

# (preset, hop lengths, frame rates to 2 decimals, cumulative tokens/s to 2 decimals)
EXPECTED = [
    ("p111", (2048, 1024, 512), (10.77, 21.53, 43.07), (10.77, 32.30, 75.37)),
    ("p111_small", (2048, 1024, 512), (10.77, 21.53, 43.07), (10.77, 32.30, 75.37)),
    ("p555", (2048, 1024, 512), (10.77, 21.53, 43.07), (53.83, 161.50, 376.83)),
    ("dac_n2", (512,), (43.07,), (86.13,)),
    ("dac_n9", (512,), (43.07,), (387.60,)),
]


@pytest.mark.parametrize(("name", "hops", "rates", "tps"), EXPECTED)
def test_preset_rates(name, hops, rates, tps):
    config = preset(name)
    assert config.n_levels == len(hops)
    assert config.hop_lengths == hops
    assert config.frame_rates == tuple(22050 / h for h in hops)  # exact, not rounded
    assert tuple(round(r, 2) for r in config.frame_rates) == rates
    cumulative = tuple(round(config.tokens_per_second(levels=k), 2) for k in range(1, config.n_levels + 1))
    assert cumulative == tps
    assert config.tokens_per_second() == config.tokens_per_second(levels=config.n_levels)


def test_strides_mirror():
    config = preset("p111")
    assert config.base_hop == 256
    assert config.level_rates == (2, 2)
    assert config.decoder_rates == (2, 4, 4, 4, 4)  # finest level (hop 512) back to samples
    dac = preset("dac_n2")
    assert dac.decoder_rates == (2, 4, 4, 4, 4) and dac.level_rates == ()


def test_uneven_pyramid_rates_order():
    config = CodecConfig(encoder_rates=(2, 2), pyramid_rates=(2, 3), n_codebooks=(1, 1))
    # base hop 4; finest = 4 * 2 = 8, coarsest = 8 * 3 = 24
    assert config.hop_lengths == (24, 8)
    assert config.level_rates == (3,)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_dict_round_trip_through_json(name):
    config = preset(name)
    data = json.loads(json.dumps(config.to_dict()))
    restored = CodecConfig.from_dict(data)
    assert restored == config
    assert isinstance(restored.encoder_rates, tuple) and isinstance(restored.n_codebooks, tuple)


def test_from_dict_rejects_unknown_keys():
    data = preset("p111").to_dict() | {"n_layers": 3}
    with pytest.raises(FormatError, match="unknown keys: n_layers"):
        CodecConfig.from_dict(data)


def test_from_dict_rejects_missing_keys():
    data = preset("p111").to_dict()
    del data["latent_dim"]
    with pytest.raises(FormatError, match="missing keys: latent_dim"):
        CodecConfig.from_dict(data)


def test_configs_from_before_a_key_existed_load_with_its_old_behaviour():
    data = preset("p111_small").to_dict()
    del data["codebook_projection_bias"]  # codecs exported before the option existed
    assert CodecConfig.from_dict(data).codebook_projection_bias is True


def test_codebook_projection_bias_switch():
    from pyramid_cli.codec.model import PyramidCodec

    config = CodecConfig.from_dict(preset("p111_small").to_dict() | {"codebook_projection_bias": False})
    stage = PyramidCodec(config).quantizers[0].stages[0]
    assert stage.in_proj.bias is None and stage.out_proj.bias is not None
    assert PyramidCodec(preset("p111_small")).quantizers[0].stages[0].in_proj.bias is not None


def test_from_dict_rejects_invalid_values():
    data = preset("p111").to_dict() | {"n_codebooks": [1, 1]}
    with pytest.raises(FormatError, match="n_codebooks"):
        CodecConfig.from_dict(data)
    with pytest.raises(FormatError):
        CodecConfig.from_dict([1, 2])  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"encoder_rates": ()},
        {"encoder_rates": (4, 1)},
        {"pyramid_rates": (2, 2), "n_codebooks": (1, 1, 1)},
        {"n_codebooks": (1, 0, 1)},
        {"quantizer_dropout": 1.5},
        {"latent_dim": 0},
        {"decoder_dim": 16},  # cannot halve five times
    ],
)
def test_invalid_configs_raise(kwargs):
    with pytest.raises(UsageError):
        CodecConfig(**kwargs)


def test_lists_become_tuples_and_config_is_frozen():
    config = CodecConfig(encoder_rates=[4, 4, 4, 4], pyramid_rates=[2, 2, 2], n_codebooks=[1, 1, 1])
    assert config.encoder_rates == (4, 4, 4, 4) and config.n_codebooks == (1, 1, 1)
    with pytest.raises(AttributeError):
        config.latent_dim = 3  # type: ignore[misc]


def test_bad_levels_and_preset_names():
    config = preset("p111")
    with pytest.raises(UsageError):
        config.tokens_per_second(levels=0)
    with pytest.raises(UsageError):
        config.tokens_per_second(levels=4)
    with pytest.raises(UsageError, match="unknown codec preset"):
        preset("p999")
