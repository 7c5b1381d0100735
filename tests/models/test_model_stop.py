"""A catalogue entry's own `stop` strings (the Gemma 3 base model's "\\nUser:") reach the engine as
default stop sequences of every request it serves, after the request's own; stopping at one of them
is the end of the model's turn, not a stop sequence the client asked for."""

from __future__ import annotations

import dataclasses

from hotspare.agents.fit import ContextPolicy
from hotspare.agents.prompt import PromptInput
from hotspare.agents.turn import AnswerReader, Renderer, prepare_turn
from hotspare.app import engine_config, local_backend
from hotspare.config import LocalSettings, Settings
from hotspare.core.types import (
    ChatRequest,
    Finish,
    FinishReason,
    Message,
    Role,
    SamplingParams,
    TextDelta,
    Usage,
)
from hotspare.engine.backends.gbnf import GrammarBuilder
from hotspare.engine.local import LocalEngine
from hotspare.models.catalog import load_catalog

GEMMA = "gemma3-270m-q4km"


def chat(text: str, **sampling: object) -> ChatRequest:
    return ChatRequest("any", (Message(Role.USER, text),), SamplingParams(**sampling))  # type: ignore[arg-type]


async def _count(prompt: str) -> int:
    return len(prompt)


def _render(prompt: PromptInput) -> str:
    return "\n".join(m.content for m in prompt.messages)


RENDERER = Renderer(_render, _count, native_tools=False, new_grammar=GrammarBuilder)


async def test_the_models_stop_strings_follow_the_requests_own() -> None:
    request = chat("Hi", stop=("###", "\nUser:"))
    turn = await prepare_turn(request, RENDERER, 512, ContextPolicy.REJECT, ("\nUser:", "\nQ:", "\nQ:"))
    assert turn.sampling.stop == ("###", "\nUser:", "\nQ:")
    assert turn.model_stop == ("\nQ:",)  # "\nUser:" was the client's own
    plain = await prepare_turn(chat("Hi"), RENDERER, 512, ContextPolicy.REJECT)
    assert plain.sampling.stop == () and plain.model_stop == ()


async def test_stopping_at_the_models_own_string_ends_the_turn() -> None:
    turn = await prepare_turn(chat("Hi", stop=("###",)), RENDERER, 512, ContextPolicy.REJECT, ("\nUser:",))
    at_model_stop = Finish(FinishReason.STOP_SEQUENCE, Usage(3, 4), "m", "\nUser:")
    assert AnswerReader(turn).finish(at_model_stop) == [Finish(FinishReason.END_TURN, Usage(3, 4), "m", None)]
    at_client_stop = dataclasses.replace(at_model_stop, stop_sequence="###")
    assert AnswerReader(turn).finish(at_client_stop) == [at_client_stop]


def test_the_catalogue_stop_reaches_the_engine_config() -> None:
    settings = Settings(local=LocalSettings(model=GEMMA))
    entry = load_catalog().get(GEMMA)
    assert entry.stop == ("\nUser:",)
    assert engine_config(settings, entry).stop == ("\nUser:",)


async def test_the_gemma_base_model_ends_its_turn_at_the_next_user_line() -> None:
    """The real Gemma 3 270M base model on the real engine. Without the catalogue's stop it goes on
    writing the user's next line ("\\nUser: What is ..."), greedily, until max_tokens."""
    settings = Settings(local=LocalSettings(model=GEMMA, context_tokens=1024, persist_prefixes=False))
    engine = local_backend(settings)
    assert isinstance(engine, LocalEngine)
    await engine.start()
    try:
        text, finish = "", None
        request = chat("What is the capital of France?", temperature=0, max_tokens=60)
        async for event in engine.stream(request):
            if isinstance(event, TextDelta):
                text += event.text
            elif isinstance(event, Finish):
                finish = event
    finally:
        await engine.stop()
    assert finish is not None
    assert (finish.reason, finish.stop_sequence) == (FinishReason.END_TURN, None)
    assert "Paris" in text and "User:" not in text
    assert finish.usage.output_tokens < 60
