"""Piecewise prompt tokenization (engine/prompt_tokens.py): the cut rule and the cache with a fake
tokenizer, then the real model's tokenizer: pieces give exactly llama.cpp's tokens of the whole."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from hotspare.core.types import Message, Role
from hotspare.engine.backends.llama_cpp import LlamaCppModel
from hotspare.engine.chat_template import ChatTemplate
from hotspare.engine.prompt_tokens import MAX_SPECIAL_TOKENS, PromptTokenizer, SpecialToken, cut_texts


def _control(text: str, *, strips_left: bool = False) -> SpecialToken:
    return SpecialToken(text, is_control=True, strips_left=strips_left)


def test_cuts_are_control_tokens_no_other_special_can_reach_across() -> None:
    specials = [
        _control("<|im_start|>"),
        _control("<|im_end|>"),
        SpecialToken("<tool>", is_control=False, strips_left=False),  # user-defined: carved, not cut
        _control("<mask>", strips_left=True),  # takes the whitespace before it
        _control(" <pad>"),  # starts with whitespace
        _control("<s>"),
        _control("<s>x"),  # contains <s>, longer: carved first
        _control("[A]"),
        _control("]]]"),  # as long as "[A]" (it may be carved first) and overlaps its end
        _control("abab"),  # overlaps itself
    ]
    assert cut_texts(specials) == ("<s>x", "<|im_end|>", "<|im_start|>")


def test_a_vocabulary_with_too_many_specials_is_tokenized_whole() -> None:
    """Gemma 3 has 6,414 special tokens: comparing every pair made its engine load take 196 s."""
    many = [_control(f"<unused{i}>") for i in range(MAX_SPECIAL_TOKENS + 1)]
    assert cut_texts(many) == ()
    assert len(cut_texts(many[:MAX_SPECIAL_TOKENS])) == MAX_SPECIAL_TOKENS


def test_a_shorter_special_does_not_stop_a_cut() -> None:
    assert cut_texts([_control("<|end|>"), _control("|>")]) == ("<|end|>",)


class _Counting:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, piece: str) -> list[int]:
        self.calls.append(piece)
        return [ord(c) for c in piece]


def test_pieces_are_cut_before_each_cut_text() -> None:
    tokenizer = PromptTokenizer(_Counting(), ["<a>", "<bb>"])
    assert tokenizer.pieces("x<a>y<bb>z<a><a>") == ["x", "<a>y", "<bb>z", "<a>", "<a>"]
    assert tokenizer.pieces("<a>") == ["<a>"]
    assert tokenizer.pieces("") == []


def test_only_new_pieces_are_tokenized_again() -> None:
    piece = _Counting()
    tokenizer = PromptTokenizer(piece, ["<a>"])
    turn_1 = "sys<a>hello<a>"
    assert tokenizer.tokenize(turn_1) == [ord(c) for c in turn_1]
    turn_2 = turn_1 + "answer<a>next"
    assert tokenizer.tokenize(turn_2) == [ord(c) for c in turn_2]
    assert piece.calls == ["sys", "<a>hello", "<a>", "<a>answer", "<a>next"]
    assert (tokenizer.num_hits, tokenizer.num_misses) == (2, 5)


def test_the_cache_is_bounded_least_recently_used_first() -> None:
    piece = _Counting()
    tokenizer = PromptTokenizer(piece, ["|"], max_cached_tokens=8)
    tokenizer.tokenize("aaaa|bbb")  # 4 + 4 tokens: full
    tokenizer.tokenize("aaaa")  # a hit: "aaaa" is now the most recent
    tokenizer.tokenize("|cc")  # 3 more: "|bbb" (least recent) goes
    assert tokenizer.num_cached_tokens == 7
    piece.calls.clear()
    tokenizer.tokenize("aaaa|cc")
    assert piece.calls == []
    tokenizer.tokenize("|bbb")
    assert piece.calls == ["|bbb"]
    tokenizer.tokenize("x" * 9)  # longer than the whole cache: tokenized, not kept
    assert tokenizer.num_cached_tokens <= 8


# ----- the real tokenizer -----


@pytest.fixture(scope="module")
def model(model_path: Path) -> LlamaCppModel:
    m = LlamaCppModel(model_path, kv_cache_tokens=512, max_slots=2, batch_tokens=64, num_threads=1)
    yield m
    m.close()


def _prompts(model: LlamaCppModel) -> list[str]:
    template = ChatTemplate(
        model.info.chat_template, bos_token=model.info.bos_token, eos_token=model.info.eos_token
    )
    rng = random.Random(7)
    words = [
        "hello",
        " world",
        "\n",
        "  ",
        "\t",
        "é",
        "日本",
        "🙂",
        "<|im_end|>",
        "<|im_start|>",
        "<",
        "|",
        ">",
        "x",
    ]
    prompts = []
    for i in range(40):
        texts = ["".join(rng.choice(words) for _ in range(rng.randint(0, 30))) for _ in range(4)]
        messages = (
            Message(Role.SYSTEM, f"You are agent {i}.{texts[0]}"),
            Message(Role.USER, texts[1]),
            Message(Role.ASSISTANT, texts[2]),
            Message(Role.USER, texts[3]),
        )
        tools = [{"type": "function", "function": {"name": f"tool_{i}", "parameters": {"type": "object"}}}]
        prompts.append(template.render(messages, tools if i % 2 else None))
        prompts.append("".join(texts))
    return prompts


def test_the_real_tokenizer_is_cut_at_the_chat_markers(model: LlamaCppModel) -> None:
    assert model._prompt_tokens is not None  # SmolLM2's BPE vocabulary: on
    assert model._prompt_tokens.pieces("<|im_start|>user\nhi<|im_end|>\n") == [
        "<|im_start|>user\nhi",
        "<|im_end|>\n",
    ]


@pytest.mark.parametrize("add_bos", [False, True])
def test_pieces_give_exactly_the_tokens_of_the_whole(model: LlamaCppModel, add_bos: bool) -> None:
    for prompt in _prompts(model):
        whole = model._tokenize_whole(prompt, add_bos)
        assert model.tokenize(prompt, add_bos=add_bos) == whole, prompt
        assert model.tokenize(prompt, add_bos=add_bos) == whole, prompt  # from the cache this time
