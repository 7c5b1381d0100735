"""The benchmark harness the scripts share (`python -m scripts.bench_engine`, `scripts.bench_agent`):
`servers` starts the servers compared (hotspare, llama.cpp's llama-server, llama-cpp-python) and
drives them; `report` turns the measurements into the Markdown tables of docs/benchmarks.md.

A library, not a script and not test support: pytest never imports it. It lives at the repo root
beside `scripts/` (which imports it when run as modules from the root), not in `src/` (it is not
shipped) nor under `tests/` (it measures; it asserts nothing)."""
