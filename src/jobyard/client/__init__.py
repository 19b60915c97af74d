"""The Python SDK: jobyard.Client over httpx. The CLI's only way to reach a server."""
