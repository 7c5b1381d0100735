"""A stand-in engine process for the crash-loop tests: it speaks the engine protocol (engine/protocol.py)
and dies by SIGSEGV on demand, as llama.cpp does when a kernel cannot run on the CPU.

`config.model_name` picks the behaviour: "crash-on-start" (or STAND_IN_CRASH=start in the environment)
dies before it is ready; anything else
answers every prompt with "ok", except prompts that contain "POISON", which kill it, and "HOLD",
which get one delta and then no end. Spawned by
LocalEngine in place of the real worker (the tests patch `hotspare.engine.process.engine_main`)."""

from __future__ import annotations

import os
import signal
from multiprocessing.connection import Connection

from hotspare.core.types import FinishReason
from hotspare.engine.config import EngineConfig
from hotspare.engine.protocol import (
    Delta,
    Done,
    GetStats,
    ModelInfo,
    Ready,
    Reply,
    Shutdown,
    Submit,
    Tokenize,
)

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def crashing_worker(conn: Connection, config: EngineConfig, log_level: int = 0) -> None:
    if config.model_name == "crash-on-start" or os.environ.get("STAND_IN_CRASH") == "start":
        os.kill(os.getpid(), signal.SIGSEGV)
    info = ModelInfo(CHATML, "", "<|im_end|>", 2048, 2048, 100, "stand-in engine")
    conn.send(Ready(info, 2048, 0.0))
    while True:
        try:
            cmd = conn.recv()
        except EOFError:
            return
        if isinstance(cmd, Shutdown):
            return
        if isinstance(cmd, Submit):
            if "POISON" in cmd.prompt:
                os.kill(os.getpid(), signal.SIGSEGV)
            if "HOLD" in cmd.prompt:  # text, then nothing: the test kills the process mid-answer
                conn.send([Delta(rid, "partial") for rid in cmd.request_ids])
            elif not cmd.warmup:
                for rid in cmd.request_ids:
                    conn.send([Delta(rid, "ok"), Done(rid, FinishReason.END_TURN, 3, 1, 0, None)])
        elif isinstance(cmd, Tokenize):
            conn.send([Reply(cmd.request_id, len(cmd.prompt) // 4)])
        elif isinstance(cmd, GetStats):
            conn.send([Reply(cmd.request_id, {})])
