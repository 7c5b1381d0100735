"""The test suite, a package: its support code (fakes/, serving.py, sdk_clients.py) is imported as
`tests.*` by the tests and by the scripts that reuse it (`python -m scripts.soak`)."""
