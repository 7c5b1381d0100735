"""The OpenAI Responses API: `request` (request and items -> `ChatRequest`), `render` (the response
object and its event stream), `routes` (the endpoints, passthrough recording), `store` (the SQLite
conversation store) and `lookup` (GET / DELETE of a stored response)."""
