"""hotspare: a warm local LLM behind the OpenAI and Anthropic APIs, with failover from cloud providers."""

__version__ = "0.1.0"
