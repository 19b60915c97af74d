"""Persistence only: SQLAlchemy rows, typed query functions, migrations."""
