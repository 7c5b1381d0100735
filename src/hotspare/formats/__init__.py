"""The client wire formats, one module each, where both the API layer (answers of the local model and
of cross-format upstreams) and the upstream clients (the tail of a passthrough stream after a
takeover) take what a format says: its stop / finish reason names, its SSE framing, its error
shapes (errors.py, the one table of which error goes out as what).

Layering: this package imports only `hotspare.core`; `api` and `upstream` import it.
"""
