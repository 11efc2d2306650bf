import json
import subprocess
import sys
from pathlib import Path

import pytest
import safetensors
import torch

from pyramid_cli.codec import CodecConfig, PyramidCodec
from pyramid_cli.codec.losses import MultiScaleMelLoss, waveform_l1
from pyramid_cli.codec.targets import band_limited_targets
from pyramid_cli.errors import CodecMismatchError, FormatError, InputError, UsageError

TINY = CodecConfig(
    name="tiny",
    encoder_dim=4,
    encoder_rates=(2, 2),
    decoder_dim=16,
    pyramid_rates=(2, 2, 2),
    latent_dim=16,
    n_codebooks=(1, 2, 1),
    codebook_size=32,
    codebook_dim=4,
    quantizer_dropout=0.5,
)
TINY_DAC = CodecConfig(
    name="tiny-dac",
    encoder_dim=4,
    encoder_rates=(2, 2, 2),
    decoder_dim=16,
    pyramid_rates=(),
    latent_dim=16,
    n_codebooks=(2,),
    codebook_size=32,
    codebook_dim=4,
)



def make(config: CodecConfig = TINY, seed: int = 0) -> PyramidCodec:
    torch.manual_seed(seed)
    return PyramidCodec(config).eval()


def audio(batch: int = 2, length: int = 700, seed: int = 1) -> torch.Tensor:
    return 0.3 * torch.randn(batch, 1, length, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("config", [TINY, TINY_DAC], ids=["pyramid", "dac"])
@pytest.mark.parametrize("length", [1, 255, 256, 700])
def test_encode_shapes_match_frame_counts(config, length):
    model = make(config)
    codes = model.encode(audio(length=length))
    assert [c.shape[-1] for c in codes] == model.frame_counts(length)
    for c, n_q in zip(codes, config.n_codebooks, strict=True):
        assert c.shape[:2] == (2, n_q) and c.dtype == torch.long
        assert 0 <= int(c.min()) and int(c.max()) < config.codebook_size
    assert model.decode(codes).shape[-1] == model.frame_counts(length)[-1] * config.hop_lengths[-1]


def test_frame_counts_follow_the_hops():
    model = make()
    assert model.frame_counts(32) == [1, 2, 4]  # hops 32 / 16 / 8
    assert model.frame_counts(33) == [2, 4, 8]


@pytest.mark.parametrize("levels", [1, 2])
def test_decode_ignores_finer_levels(levels):
    model = make()
    codes = model.encode(audio())
    reference = model.decode(codes, levels=levels, length=700)
    scrambled = [c if i < levels else torch.randint_like(c, TINY.codebook_size) for i, c in enumerate(codes)]
    torch.testing.assert_close(model.decode(scrambled, levels=levels, length=700), reference, rtol=0, atol=0)
    torch.testing.assert_close(model.decode(codes[:levels], length=700), reference, rtol=0, atol=0)
    assert not torch.equal(model.decode(codes, length=700), reference)  # the finer levels do matter


@pytest.mark.parametrize("levels", [1, 2, 3])
def test_decode_is_decoding_r(levels):
    """Eq. 1: decode(levels=k) = decoder(R[k-1] brought to the finest rate)."""
    model = make()
    codes = model.encode(audio())
    q = [rvq.from_codes(c) for rvq, c in zip(model.quantizers, codes, strict=True)]
    r = q[0]
    for i in range(1, levels):
        r = model.up_decode[i - 1](r) + q[i]
    for i in range(levels, TINY.n_levels):
        r = model.up_decode[i - 1](r)
    torch.testing.assert_close(model.decode(codes, levels=levels), model.decoder(r))


def test_forward_matches_encode_then_decode_in_eval():
    model = make()
    wav = audio()
    out = model(wav, levels_to_decode=[0, 2])
    assert set(out.reconstructions) == {0, 2}
    codes = model.encode(wav)
    assert all(torch.equal(a, b) for a, b in zip(out.codes, codes, strict=True))
    for i, y in out.reconstructions.items():
        assert y.shape == wav.shape
        torch.testing.assert_close(y, model.decode(codes, levels=i + 1, length=wav.shape[-1]))
    assert out.commitment_loss.dim() == 0 and out.codebook_loss.dim() == 0


def test_single_level_is_a_dac():
    model = make(TINY_DAC)
    assert len(model.down) == len(model.project) == len(model.up_encode) == len(model.up_decode) == 0
    wav = audio(length=64)
    features = model.features(wav)
    assert len(features) == 1
    torch.testing.assert_close(features[0], model.encoder(wav))  # quantise the encoder output itself
    codes = model.encode(wav)
    assert len(codes) == 1 and codes[0].shape == (2, 2, 8)
    z_q = model.quantizers[0](model.encoder(wav)).z_q
    torch.testing.assert_close(model.decode(codes), model.decoder(z_q))
    assert set(model(wav).reconstructions) == {0}


def test_gradients_reach_every_trainable_part():
    model = make().train()
    out = model(audio())
    loss = sum(y.abs().mean() for y in out.reconstructions.values()) + out.commitment_loss + out.codebook_loss
    loss.backward()
    for name in ["encoder", "down", "project", "up_encode", "up_decode", "decoder", "quantizers"]:
        grads = [p.grad for p in getattr(model, name).parameters()]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_save_and_load_round_trip(tmp_path):
    model = make()
    wav = audio()
    model.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text()) == TINY.to_dict()
    with safetensors.safe_open(tmp_path / "model.safetensors", "pt") as handle:
        metadata = handle.metadata()
    assert metadata["codec"] == "tiny" and all(isinstance(v, str) for v in metadata.values())
    loaded = PyramidCodec.from_pretrained(tmp_path)
    assert loaded.config == TINY and not loaded.training
    codes = model.encode(wav)
    assert all(torch.equal(a, b) for a, b in zip(loaded.encode(wav), codes, strict=True))
    torch.testing.assert_close(loaded.decode(codes), model.decode(codes), rtol=0, atol=0)


def test_fp16_and_folded_checkpoints_load(tmp_path):
    model = make()
    codes = model.encode(audio())
    reference = model.decode(codes)
    model.save_pretrained(tmp_path / "half", fp16=True)
    half = PyramidCodec.from_pretrained(tmp_path / "half")
    assert half.decoder[0].parametrizations.weight.original1.dtype == torch.float32
    torch.testing.assert_close(half.decode(codes), reference, rtol=0, atol=0.02)
    model.fold_weight_norm()
    torch.testing.assert_close(model.decode(codes), reference)
    model.save_pretrained(tmp_path / "folded")
    folded = PyramidCodec.from_pretrained(tmp_path / "folded")
    torch.testing.assert_close(folded.decode(codes), reference)


def test_load_errors(tmp_path):
    with pytest.raises(InputError):
        PyramidCodec.from_pretrained(tmp_path / "nowhere")
    make().save_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(TINY.to_dict() | {"latent_dim": 8}))
    with pytest.raises(FormatError, match="do not match"):
        PyramidCodec.from_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(FormatError):
        PyramidCodec.from_pretrained(tmp_path)


def test_bad_inputs_raise():
    model = make()
    codes = model.encode(audio())
    with pytest.raises(InputError):
        model.encode(torch.zeros(2, 700))
    with pytest.raises(UsageError):
        model.decode(codes, levels=4)
    with pytest.raises(UsageError):
        model(audio(), levels_to_decode=[3])
    with pytest.raises(UsageError):
        model.decode(codes[:1], levels=2)
    with pytest.raises(UsageError):
        model.decode(codes, length=10_000)
    with pytest.raises(CodecMismatchError):
        model.decode([codes[0], torch.cat([codes[1]] * 2, dim=1), codes[2]])  # 4 codebooks, codec has 2
    with pytest.raises(CodecMismatchError):
        model.decode([codes[0], codes[1][..., :-1]], levels=2)
    with pytest.raises(CodecMismatchError):
        model.decode([codes[0] + TINY.codebook_size])


def test_a_few_steps_lower_the_loss():
    model = make(TINY, seed=3).train()
    mel = MultiScaleMelLoss(22050, window_lengths=(64, 256), n_mels=(10, 40))
    t = torch.arange(2048) / 22050
    wav = (
        (0.5 * torch.sin(2 * torch.pi * 440 * t) * torch.linspace(0, 1, 2048)).view(1, 1, -1).repeat(2, 1, 1)
    )
    targets = band_limited_targets(wav, TINY.n_levels)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def step() -> float:
        out = model(wav)
        loss = sum(mel(y, targets[i]) + waveform_l1(y, targets[i]) for i, y in out.reconstructions.items())
        loss = loss + 0.25 * out.commitment_loss + out.codebook_loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    losses = [step() for _ in range(12)]
    assert min(losses[-3:]) < losses[0]


def test_inference_fast_path_matches_autograd_path_and_spares_the_input():
    model = make()
    wav = audio()
    kept = wav.clone()
    codes = model.encode(wav)
    with torch.inference_mode():
        fast_codes = model.encode(wav)
        fast = model.decode(fast_codes)
    assert torch.equal(wav, kept)
    assert all(torch.equal(a, b) for a, b in zip(fast_codes, codes, strict=True))
    torch.testing.assert_close(fast, model.decode(codes))
    z = torch.randn(2, TINY.latent_dim, 4)
    z_kept = z.clone()
    with torch.no_grad():
        model.decoder(z)
    assert torch.equal(z, z_kept)


def test_loading_models_does_not_import_torch_dynamo() -> None:
    """The shape probe that from_pretrained builds on the meta device must not run ops whose meta
    fallback imports torch._dynamo or sympy: those imports cost 0.9-1.4 s at the start of every command."""
    script = ("import sys\nfrom pyramid_cli.codec.api import load_codec\nfrom pyramid_cli.lm.model import PyramidLM\n"
              "load_codec('pyramid-22k-p111-notes-v3')\nload_codec('pyramid-22k-p111-small')\n"
              "PyramidLM.from_pretrained(sys.argv[1])\nprint('torch._dynamo' in sys.modules, 'sympy' in sys.modules)\n")
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run([sys.executable, "-c", script, str(root / "models/pyramid-lm-small")], capture_output=True,
                          text=True, timeout=120, cwd=root)
    assert done.stdout.split() == ["False", "False"], done.stderr
