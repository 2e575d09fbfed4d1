"""Command-line tools: ``count`` (parameters and FLOPs) and ``benchmark`` (speed, memory)."""
