"""Tokenizing prompts piece by piece, each piece's tokens kept for the next prompt that repeats it.

Every turn of a conversation repeats the text of the turn before, and a warm-up renders the very
prompt its failover sends. Tokenized whole, that text is tokenized again each time: llama_tokenize of
a 4.3k-token prompt took 5.6-6.2 ms of the failover turn's ~130 ms first token, and 2.6-2.9 ms of a
28-token question's ~95 ms after a 2.2k-token system prompt (measured in the engine process, 2 threads,
SmolLM2-135M). Cut into pieces, only the new pieces are tokenized (a few hundred microseconds).

Why the pieces give the same tokens as the whole. llama.cpp first carves every special token's text
(`<|im_start|>`) out of the prompt, longest texts first, then tokenizes each run of text between them
on its own (SPM prefixes a run with a space when a special token comes before it, as it does at the
very start). So a cut right before a special token's text changes nothing, provided no special match
can reach across the cut. `cut_texts` keeps the texts for which that holds: control tokens only (the
template's markers), none that a longer-or-equal special text contains or overlaps (it would be carved
first and take the cut's text with it), none that overlaps itself, none that starts or ends with
whitespace or eats the whitespace before it (lstrip). Other vocabularies (WordPiece, Unigram) and
vocabularies that append an end token are tokenized whole: the backend decides (backends/llama_cpp.py),
and checks the rule once at load on a sample.

Bounded: at most `max_cached_tokens` tokens are kept, least recently used pieces dropped first. Not
thread-safe (the engine's one loop owns it).
"""

from __future__ import annotations

import itertools
import re
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass

MAX_CACHED_TOKENS = 262_144
"""Tokens kept (4 bytes each, plus their text): a few long conversations."""

MAX_SPECIAL_TOKENS = 256
"""Vocabularies with more special tokens are tokenized whole. Checking which texts are safe cuts
compares every pair of them (and the load-time sample holds every cut): Gemma 3's 6,414 special
tokens (6,250 of them control tokens) made the engine's load take 196 s instead of seconds. The
vocabularies the chat templates use have a few dozen (SmolLM2's 49k vocabulary has 17)."""


@dataclass(frozen=True, slots=True)
class SpecialToken:
    """A token llama.cpp carves out of the text before tokenizing it (control, user-defined or unknown)."""

    text: str
    is_control: bool
    strips_left: bool  # lstrip: its match also takes the whitespace before it


def cut_texts(specials: Sequence[SpecialToken]) -> tuple[str, ...]:
    """The special texts a prompt may be cut right before (see the module docstring); none when
    there are more than MAX_SPECIAL_TOKENS."""
    if len(specials) > MAX_SPECIAL_TOKENS:
        return ()
    texts = {s.text for s in specials if s.text}
    return tuple(
        sorted(
            s.text
            for s in specials
            if s.is_control
            and not s.strips_left
            and s.text
            and s.text == s.text.strip()
            and not _overlaps(s.text, s.text)
            and not any(_interferes(other, s.text) for other in texts if other != s.text)
        )
    )


def _interferes(other: str, cut: str) -> bool:
    """A match of `other`, carved no later than `cut` (as long or longer), could take part of `cut`."""
    return len(other) >= len(cut) and (cut in other or _overlaps(other, cut) or _overlaps(cut, other))


def _overlaps(left: str, right: str) -> bool:
    """A proper end of `left` is a proper start of `right`."""
    return any(left.endswith(right[:k]) for k in range(1, min(len(left), len(right))))


class PromptTokenizer:
    """`tokenize(text)` = `tokenize_piece(text)` for any text, from pieces cut before `cuts`."""

    def __init__(
        self,
        tokenize_piece: Callable[[str], list[int]],
        cuts: Sequence[str],
        max_cached_tokens: int = MAX_CACHED_TOKENS,
    ) -> None:
        self._tokenize_piece = tokenize_piece
        ordered = sorted(cuts, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, ordered))) if ordered else None
        self._cache: OrderedDict[str, array[int]] = OrderedDict()
        self.max_cached_tokens = max_cached_tokens
        self.num_cached_tokens = 0
        self.num_hits = 0
        self.num_misses = 0

    def tokenize(self, text: str) -> list[int]:
        tokens: list[int] = []
        for piece in self.pieces(text):
            tokens.extend(self._piece_tokens(piece))
        return tokens

    def pieces(self, text: str) -> list[str]:
        """`text` cut right before every occurrence of a cut text (no empty pieces)."""
        if self._pattern is None:
            return [text] if text else []
        bounds = [0, *(m.start() for m in self._pattern.finditer(text) if m.start() > 0), len(text)]
        return [text[a:b] for a, b in itertools.pairwise(bounds) if b > a]

    def _piece_tokens(self, piece: str) -> array[int]:
        cached = self._cache.get(piece)
        if cached is not None:
            self._cache.move_to_end(piece)
            self.num_hits += 1
            return cached
        self.num_misses += 1
        tokens = array("i", self._tokenize_piece(piece))
        if len(tokens) <= self.max_cached_tokens:
            self._cache[piece] = tokens
            self.num_cached_tokens += len(tokens)
            while self.num_cached_tokens > self.max_cached_tokens:
                _, dropped = self._cache.popitem(last=False)
                self.num_cached_tokens -= len(dropped)
        return tokens
