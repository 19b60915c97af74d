"""Kubernetes-style events: every state transition emits one."""

from __future__ import annotations

import enum
from datetime import datetime

from pydantic import BaseModel


class EventType(enum.StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class Event(BaseModel):
    type: EventType
    reason: str
    message: str
    timestamp: datetime
