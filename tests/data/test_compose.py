from pyramid_cli.data.compose import compose_piece
from pyramid_cli.data.midi import groups_present, merge_tracks


def _notes(midi):
    return [(i.program, i.is_drum, n.pitch, round(n.start, 6)) for i in midi.instruments for n in i.notes]


def test_same_seed_same_piece_and_different_seeds_differ() -> None:
    assert _notes(compose_piece(5, 20)) == _notes(compose_piece(5, 20))
    assert _notes(compose_piece(5, 20)) != _notes(compose_piece(6, 20))


def test_piece_is_multitrack_and_about_the_requested_length() -> None:
    for seed in range(5):
        midi = compose_piece(seed, 30)
        assert 25 <= midi.get_end_time() <= 60
        groups = groups_present(merge_tracks(midi))
        assert {"lead", "piano", "bass", "drums"} <= set(groups)


def _repeats_opening(lead_notes, section: float) -> bool:
    def window(k: int) -> list[tuple[int, float]]:
        eps = 1e-6  # note times are sums of floats
        return [(n.pitch, n.start - k * section) for n in lead_notes
                if k * section - eps <= n.start < (k + 1) * section - eps]

    def same(a: list[tuple[int, float]], b: list[tuple[int, float]]) -> bool:
        return len(a) == len(b) and all(p == q and abs(s - t) < 1e-6 for (p, s), (q, t) in zip(a, b, strict=True))

    first = window(0)
    n_sections = int(max(n.start for n in lead_notes) // section) + 1
    return bool(first) and any(same(window(k), first) for k in range(1, n_sections))


def test_repeated_sections_repeat_their_melody() -> None:
    # Every form repeats its A section; its lead line must come back note for note.
    for seed in range(4):
        midi = compose_piece(seed, 40)
        lead = next(i for i in midi.instruments if i.name == "lead")
        bar = 4 * 60.0 / midi.get_tempo_changes()[1][0]
        assert any(_repeats_opening(lead.notes, bars * bar) for bars in (4, 8)), seed
