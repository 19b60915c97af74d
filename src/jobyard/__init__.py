"""jobyard: a self-hosted job platform for GPU and ML training workloads."""

__version__ = "0.1.0"
