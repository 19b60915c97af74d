"""Queued jobs -> placements; running tasks -> recorded outcomes."""
