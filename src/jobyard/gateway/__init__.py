"""Interactive access to running jobs: the SSH gateway and the HTTP port proxy (docs/access.md).

A face beside `jobyard.api`: it goes through the services, never the store or executors."""

from jobyard.gateway.gateway import Gateway

__all__ = ["Gateway"]
