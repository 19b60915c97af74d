"""The Ray-compatible job API: its own app, served on its own listener."""

from jobyard.api.ray.app import create_ray_app

__all__ = ["create_ray_app"]
