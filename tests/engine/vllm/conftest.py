"""The vLLM backend's tests (engine/vllm.py, engine/vllm_launch.py) run against a fake `vllm serve`
(fake_vllm.py), each with its own hotspare home and Hugging Face cache, as the catalogue's tests do."""

from __future__ import annotations

from tests.models.conftest import isolated_homes

__all__ = ["isolated_homes"]
