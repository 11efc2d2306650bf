import pytest
import torch

from pyramid_cli.codec.quantize import ResidualVectorQuantize, VectorQuantize

DIM, SIZE, CODE_DIM = 12, 16, 4



def make_rvq(n_codebooks: int = 3, dropout: float = 0.0, seed: int = 0) -> ResidualVectorQuantize:
    torch.manual_seed(seed)
    return ResidualVectorQuantize(DIM, n_codebooks, SIZE, CODE_DIM, quantizer_dropout=dropout)


def linearised(rvq: ResidualVectorQuantize, z: torch.Tensor) -> torch.Tensor:
    """The RVQ with every lookup replaced by the identity: the straight-through gradient path."""
    total, residual = torch.zeros_like(z), z
    for q in rvq.quantizers:
        y = q.out_proj(q.in_proj(residual))
        total, residual = total + y, residual - y
    return total


def test_vq_shapes_range_and_from_codes():
    torch.manual_seed(0)
    vq = VectorQuantize(DIM, SIZE, CODE_DIM)
    z = torch.randn(3, DIM, 10)
    z_q, commitment, codebook, codes, z_e, diversity = vq(z)
    assert diversity.dim() == 0 and 0 <= diversity.item() <= 1
    assert z_q.shape == z.shape and z_e.shape == (3, CODE_DIM, 10)
    assert codes.shape == (3, 10) and codes.dtype == torch.long
    assert 0 <= int(codes.min()) and int(codes.max()) < SIZE
    assert commitment.shape == codebook.shape == (3,)
    torch.testing.assert_close(vq.from_codes(codes), z_q)


def test_vq_picks_the_most_cosine_similar_entry():
    torch.manual_seed(0)
    vq = VectorQuantize(DIM, SIZE, CODE_DIM)
    z_e = torch.randn(2, CODE_DIM, 7)
    codes = vq.nearest_codes(z_e)
    book = torch.nn.functional.normalize(vq.codebook.weight, dim=1)
    for b in range(2):
        for t in range(7):
            similarity = book @ torch.nn.functional.normalize(z_e[b, :, t], dim=0)
            assert int(codes[b, t]) == int(similarity.argmax())


@pytest.mark.parametrize("n_codebooks", [1, 3])
def test_rvq_residual_identity(n_codebooks):
    rvq = make_rvq(n_codebooks).eval()
    z = torch.randn(2, DIM, 9)
    out = rvq(z)
    assert out.codes.shape == (2, n_codebooks, 9) and out.codes.dtype == torch.long
    assert 0 <= int(out.codes.min()) and int(out.codes.max()) < SIZE
    assert out.latents.shape == (2, n_codebooks * CODE_DIM, 9)
    stages = [q.from_codes(out.codes[:, i]) for i, q in enumerate(rvq.quantizers)]
    torch.testing.assert_close(sum(stages), out.z_q)
    torch.testing.assert_close(rvq.from_codes(out.codes), out.z_q)
    # Each stage quantises what the previous ones left: the codes of the residual.
    residual = z - stages[0]
    if n_codebooks > 1:
        second = rvq.quantizers[1]
        assert torch.equal(second.nearest_codes(second.in_proj(residual)), out.codes[:, 1])


def test_straight_through_gradient():
    rvq = make_rvq(3).eval()
    z = torch.randn(2, DIM, 8, requires_grad=True)
    weight = torch.randn(2, DIM, 8)
    (grad,) = torch.autograd.grad((rvq(z).z_q * weight).sum(), z)
    (expected,) = torch.autograd.grad((linearised(rvq, z) * weight).sum(), z)
    torch.testing.assert_close(grad, expected)


def test_losses_pull_the_right_parameters():
    rvq = make_rvq(1).eval()
    z = torch.randn(2, DIM, 8)
    out = rvq(z)
    torch.testing.assert_close(out.commitment_loss, out.codebook_loss)  # same value, different gradients
    book = rvq.quantizers[0].codebook.weight
    proj = rvq.quantizers[0].in_proj.parametrizations.weight.original1
    commit_book, commit_proj = torch.autograd.grad(
        out.commitment_loss, [book, proj], allow_unused=True, retain_graph=True
    )
    assert commit_book is None and commit_proj is not None
    book_book, book_proj = torch.autograd.grad(out.codebook_loss, [book, proj], allow_unused=True)
    assert book_book is not None and book_proj is None


def test_fewer_quantizers_in_eval():
    rvq = make_rvq(3).eval()
    z = torch.randn(2, DIM, 5)
    full, partial = rvq(z), rvq(z, n_quantizers=2)
    assert partial.codes.shape == (2, 2, 5)
    assert torch.equal(partial.codes, full.codes[:, :2])
    torch.testing.assert_close(partial.z_q, rvq.from_codes(full.codes[:, :2]))


def test_quantizer_dropout_keeps_a_prefix_of_stages():
    rvq = make_rvq(4, dropout=1.0).train()
    torch.manual_seed(1)
    z = torch.randn(32, DIM, 3)
    out = rvq(z)
    assert out.codes.shape == (32, 4, 3)  # every stage still runs, as in DAC
    kept = []
    for b in range(32):
        matches = [
            k
            for k in range(1, 5)
            if torch.allclose(out.z_q[b : b + 1], rvq.from_codes(out.codes[b : b + 1, :k]), atol=1e-5)
        ]
        assert matches, f"item {b} is not a prefix sum of its stages"
        kept.append(matches[0])
    assert min(kept) < 4  # some items dropped stages
    # Without training mode or with dropout=False nothing is dropped.
    torch.testing.assert_close(rvq(z, dropout=False).z_q, rvq.from_codes(out.codes))


def test_usage_stats_count_only_in_training():
    rvq = make_rvq(2)
    z = torch.randn(4, DIM, 10)
    rvq.eval()(z)
    assert all(stats.total == 0 and stats.used == 0 for stats in rvq.usage_stats())
    out = rvq.train()(z)
    for i, stats in enumerate(rvq.usage_stats()):
        assert stats.total == 40
        assert stats.used == len(torch.unique(out.codes[:, i]))
        assert 1.0 <= stats.perplexity <= stats.used + 1e-4


def test_reseed_dead_codes():
    rvq = make_rvq(2).train()
    z = torch.randn(2, DIM, 6)
    rvq(z)
    stage = rvq.quantizers[0]
    dead = int((stage.code_counts == 0).sum())
    assert dead > 0  # 12 vectors cannot use 16 entries
    old = stage.codebook.weight.detach().clone()
    recent = torch.randn(3, DIM, 5)
    replaced = rvq.reseed_dead_codes(recent, generator=torch.Generator().manual_seed(0))
    assert replaced >= dead
    new = stage.codebook.weight.detach()
    changed = (new != old).any(dim=1)
    assert int(changed.sum()) == dead
    # Reseeded entries are projected recent inputs.
    pool = stage.in_proj(recent).transpose(1, 2).reshape(-1, CODE_DIM).detach()
    for row in new[changed]:
        assert (pool - row).abs().amax(dim=1).min() < 1e-6
    assert all(stats.total == 0 for stats in rvq.usage_stats())  # counts restart
    assert "code_counts" not in "".join(rvq.state_dict())  # statistics stay out of checkpoints


def test_diversity_loss_is_zero_for_uniform_use_and_near_one_for_collapse_with_a_gradient_out_of_it():
    from pyramid_cli.codec.quantize import VectorQuantize

    uniform = torch.eye(8).repeat(4, 1) * 10  # 32 latents, each most similar to its own entry, 4 per entry
    assert VectorQuantize.diversity(uniform, temperature=0.01).item() == pytest.approx(0.0, abs=1e-4)
    collapsed = torch.zeros(32, 8)
    collapsed[:, 3] = 1.0
    collapsed.requires_grad_(True)
    loss = VectorQuantize.diversity(collapsed)  # the default temperature, 0.1
    assert loss.item() > 0.95
    (grad,) = torch.autograd.grad(loss, collapsed)
    assert grad[:, 3].gt(0).all()  # lowering the winning similarity lowers the loss


def test_the_stage_reports_diversity_only_when_training_can_use_it():
    rvq = make_rvq(n_codebooks=2).train()
    z = torch.randn(2, DIM, 7)
    assert rvq(z).diversity_loss.item() > 0
    with torch.no_grad():
        assert rvq(z).diversity_loss.item() == 0
