"""Baseline servers that Parastream is benchmarked against, behind the same HTTP/SSE contract (docs/api.md)."""
