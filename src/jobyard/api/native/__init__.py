"""The native face: /api/v1 (OpenAPI at /docs)."""
