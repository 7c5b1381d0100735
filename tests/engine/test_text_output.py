from __future__ import annotations

from hotspare.engine.text_output import TextOutput


def feed(out: TextOutput, pieces: list[bytes]) -> list[str]:
    return [out.push(p) for p in pieces]


def test_plain_text_is_released_at_once() -> None:
    out = TextOutput()
    assert feed(out, [b"Hel", b"lo"]) == ["Hel", "lo"]


def test_split_utf8_character_waits_for_its_last_byte() -> None:
    out = TextOutput()
    euro = "€".encode()
    assert feed(out, [euro[:1], euro[1:2], euro[2:]]) == ["", "", "€"]


def test_stop_sequence_across_tokens_is_cut_and_never_shown() -> None:
    out = TextOutput(stop=("END",))
    assert feed(out, [b"abc E", b"N"]) == ["abc ", ""]
    assert out.push(b"D and more") == ""
    assert out.matched_stop == "END"
    assert out.text == "abc "


def test_held_tail_is_released_when_it_cannot_become_a_stop() -> None:
    out = TextOutput(stop=("END",))
    assert feed(out, [b"xE", b"Nx"]) == ["x", "ENx"]


def test_flush_releases_held_text_when_the_sequence_ends() -> None:
    out = TextOutput(stop=("END",))
    assert out.push(b"byE") == "by"
    assert out.flush() == "E"
    assert out.text == "byE"
