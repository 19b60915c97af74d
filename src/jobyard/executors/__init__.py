"""Executors run placements for real. They know nothing of HTTP or the database."""
