"""Benchmarks, checks and tools, run as modules from the repository root: `python -m scripts.NAME`
(so that they import the benchmark harness, `benchmarks`, and the test fakes, `tests.fakes`, as
packages; none edits `sys.path`). `install`, `build-llama-server` and `gpu-smoke` are run directly."""
