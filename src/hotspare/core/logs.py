"""The one log line format, for the API process and the engine process alike."""

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
