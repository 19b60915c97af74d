"""The ranges the store and the files can hold: the edge refuses a number outside them with a
4xx naming the field, where the database or the file system would fail with a 500."""

from __future__ import annotations

__all__ = ["INT64", "MAX_ID", "MAX_OFFSET"]

INT64 = (-(2**63), 2**63 - 1)  # SQLite's INTEGER and PostgreSQL's BIGINT
# Every id (jobs, users, tokens, keys) is an INTEGER column: 32-bit on PostgreSQL.
MAX_ID = 2**31 - 1
MAX_OFFSET = INT64[1]  # a byte offset into a log file (a signed 64-bit off_t)
