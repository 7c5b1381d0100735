"""`EngineCore` on a fake model (tests/engine/fake_model.py): a step's KV operations, decode and
post-processing (text, stops, finish reasons, errors), with the model's cells checked against the
scheduler's picture after every step."""

from __future__ import annotations

import random
import string
from pathlib import Path

from hotspare.core.types import FinishReason, SamplingParams
from hotspare.engine.config import EngineConfig
from hotspare.engine.core import EngineCore
from hotspare.engine.protocol import Delta, Done, EngineEvent, Failed, Submit
from hotspare.engine.repetition import NOISE_NATS

from .fake_model import BAD_GRAMMAR, FakeModel


def core_on(model: FakeModel, context_tokens: int = 100) -> EngineCore:
    config = EngineConfig(
        model_path=Path("fake.gguf"), model_name="fake", adapt_threads=False, host_cache_mib=0
    )
    return EngineCore(model, config, context_tokens)


def run(core: EngineCore, model: FakeModel) -> list[EngineEvent]:
    """Steps until nothing is left to run, checking the model's cells after each."""
    events: list[EngineEvent] = []
    while core.scheduler.has_work:
        events.extend(core.step())
        model.check(core.scheduler)
    return events


def text_of(events: list[EngineEvent]) -> str:
    return "".join(e.text for e in events if isinstance(e, Delta))


def submit(core: EngineCore, rid: int, prompt: str, **sampling: object) -> list[EngineEvent]:
    return core.submit(Submit(rid, prompt, SamplingParams(**sampling)))  # type: ignore[arg-type]


def test_an_answer_streams_and_ends_at_the_end_of_generation_token() -> None:
    model = FakeModel(answer="Hello")
    core = core_on(model)
    assert submit(core, 1, "Say hi") == []
    events = run(core, model)
    assert text_of(events) == "Hello"
    assert events[-1] == Done(1, FinishReason.END_TURN, 6, 6, 0, None)
    assert model.num_live_samplers == 0 and core.live == {}


def test_a_stop_string_ends_the_answer_before_it() -> None:
    model = FakeModel(answer="one, two; three")
    core = core_on(model)
    submit(core, 1, "Count", stop=(";",))
    events = run(core, model)
    assert text_of(events) == "one, two"
    assert events[-1] == Done(1, FinishReason.STOP_SEQUENCE, 5, 9, 0, ";")


def test_max_tokens_ends_the_answer_with_length() -> None:
    model = FakeModel(answer="Hello")
    core = core_on(model)
    submit(core, 1, "Say hi", max_tokens=3)
    events = run(core, model)
    assert text_of(events) == "Hel"
    assert events[-1] == Done(1, FinishReason.LENGTH, 6, 3, 0, None)


def test_a_sampler_the_model_refuses_fails_the_request_and_schedules_nothing() -> None:
    model = FakeModel()
    core = core_on(model)
    assert submit(core, 1, "Hi", grammar=BAD_GRAMMAR) == [
        Failed(1, "InvalidRequest", ("the grammar could not be parsed",))
    ]
    assert not core.scheduler.has_work and model.num_live_samplers == 0


def test_a_prompt_that_fills_the_context_overflows() -> None:
    core = core_on(FakeModel(), context_tokens=10)
    assert submit(core, 1, "x" * 10) == [Failed(1, "ContextOverflow", (10, 10))]
    assert not core.scheduler.has_work


def test_the_next_turn_decodes_only_what_the_cache_does_not_hold() -> None:
    model = FakeModel(answer="Fine.")
    core = core_on(model)
    submit(core, 1, "How are you?")
    run(core, model)
    model.decoded.clear()
    submit(core, 2, "How are you?Fine.And you?")
    events = run(core, model)
    first = model.decoded[0]
    assert [(i.start, len(i.tokens)) for i in first] == [(17, 8)]  # 12 + 5 tokens came from the cache
    assert events[-1] == Done(2, FinishReason.END_TURN, 25, 6, 17, None)


def test_a_cancelled_request_frees_its_sampler_and_says_nothing_more() -> None:
    model = FakeModel(answer="a long answer")
    core = core_on(model)
    submit(core, 1, "Go")
    assert text_of(core.step()) == "a"
    core.cancel(1)
    assert model.num_live_samplers == 0 and run(core, model) == []


def test_a_decode_without_room_is_retried_next_step() -> None:
    model = FakeModel(answer="ok")
    core = core_on(model)
    submit(core, 1, "Hi")
    model.fail_next_decode = True
    assert core.step() == []
    model.check(core.scheduler)
    events = run(core, model)
    assert text_of(events) == "ok" and events[-1] == Done(1, FinishReason.END_TURN, 2, 3, 0, None)


def test_n_choices_are_tokenized_once_and_each_answers_under_its_own_id() -> None:
    """Before: a Submit had one request id; n choices were n Submits, each tokenized."""
    model = FakeModel(answer="Hi")
    core = core_on(model)
    tokenized = 0
    tokenize = model.tokenize

    def counting(text: str, *, add_bos: bool) -> list[int]:
        nonlocal tokenized
        tokenized += 1
        return tokenize(text, add_bos=add_bos)

    model.tokenize = counting  # type: ignore[method-assign]
    assert core.submit(Submit(1, "Say hi", SamplingParams(), sibling_ids=(2, 3))) == []
    events = run(core, model)
    assert tokenized == 1 and core.stats()["num_prompts"] == 1
    for rid in (1, 2, 3):
        assert "".join(e.text for e in events if isinstance(e, Delta) and e.request_id == rid) == "Hi"
    done = {e.request_id: e for e in events if isinstance(e, Done)}
    assert done[1] == Done(1, FinishReason.END_TURN, 6, 3, 0, None)
    assert done[2] == Done(2, FinishReason.END_TURN, 6, 3, 5, None)  # the leader's cells, shared
    assert model.num_live_samplers == 0 and core.live == {}


def test_a_refused_prompt_fails_every_choice() -> None:
    model = FakeModel()
    core = core_on(model, context_tokens=4)
    events = core.submit(Submit(1, "too long", SamplingParams(), sibling_ids=(2,)))
    assert [(e.request_id, e.kind) for e in events if isinstance(e, Failed)] == [
        (1, "ContextOverflow"),
        (2, "ContextOverflow"),
    ]
    events = core_on(model).submit(Submit(3, "x", SamplingParams(grammar=BAD_GRAMMAR), sibling_ids=(4,)))
    assert [(e.request_id, e.kind) for e in events if isinstance(e, Failed)] == [
        (3, "InvalidRequest"),
        (4, "InvalidRequest"),
    ]
    assert model.num_live_samplers == 0


_rng = random.Random(3)
LOST = "".join(_rng.choice(string.ascii_letters + string.digits) for _ in range(200))
"""An answer with no loop in it (200 varied characters): only the model's entropy can call it noise."""


def lost_core(entropy_nats: float, noise_stop_nats: float = NOISE_NATS) -> tuple[EngineCore, FakeModel]:
    model = FakeModel(capacity_tokens=400, answer=LOST)
    model.entropy_nats = entropy_nats
    config = EngineConfig(
        model_path=Path("fake.gguf"),
        model_name="fake",
        adapt_threads=False,
        host_cache_mib=0,
        noise_stop_nats=noise_stop_nats,
    )
    return EngineCore(model, config, 400), model


def test_an_answer_the_model_is_lost_in_is_cut_as_noise_and_reported_as_length() -> None:
    core, model = lost_core(entropy_nats=NOISE_NATS + 0.5)
    submit(core, 1, "Go")
    events = run(core, model)
    # the first check with a full window: 64 tokens
    assert text_of(events) == LOST[:64]
    assert events[-1] == Done(1, FinishReason.LENGTH, 2, 64, 0, None)
    assert (core.num_noise_stops, core.num_repetition_stops) == (1, 0)
    assert core.stats()["num_noise_stops"] == 1


def test_a_confident_answer_or_a_stop_turned_off_is_not_cut() -> None:
    for entropy, limit in ((NOISE_NATS - 0.5, NOISE_NATS), (NOISE_NATS + 0.5, 0.0)):
        core, model = lost_core(entropy_nats=entropy, noise_stop_nats=limit)
        submit(core, 1, "Go")
        events = run(core, model)
        assert text_of(events) == LOST and events[-1].reason is FinishReason.END_TURN  # type: ignore[union-attr]
        assert core.num_noise_stops == 0


def test_an_answer_under_a_grammar_is_not_measured() -> None:
    core, model = lost_core(entropy_nats=NOISE_NATS + 0.5)
    submit(core, 1, "Go", grammar='root ::= "x"')
    assert text_of(run(core, model)) == LOST and core.num_noise_stops == 0


def test_a_lazy_grammar_s_trigger_ends_the_measurement() -> None:
    core, model = lost_core(entropy_nats=NOISE_NATS + 0.5)
    trigger = LOST[20:30]  # switched on before the first check: the rest is the grammar's
    submit(core, 1, "Go", grammar='root ::= "x"', grammar_triggers=(trigger,))
    assert text_of(run(core, model)) == LOST and core.num_noise_stops == 0
    # a trigger that never comes: measured as any free answer
    core, model = lost_core(entropy_nats=NOISE_NATS + 0.5)
    submit(core, 1, "Go", grammar='root ::= "x"', grammar_triggers=("<tool_call>",))
    assert text_of(run(core, model)) == LOST[:64] and core.num_noise_stops == 1
