"""
What the gateway did and is doing, below every protocol: the audit events
(L{cosgw.audit.events}) and the live sessions and transfers they belong to
(L{cosgw.audit.sessions}).  The outputs that write the events (text, JSON,
xferlog) and the admin listener that shows the live table are observers of
this package, never the other way round.
"""

from cosgw.audit.events import (
    AUDIT_KEY,
    AUDIT_NAMESPACE,
    EVENTS,
    TRANSFER_EVENTS,
    audit_fields,
    emit,
)
from cosgw.audit.sessions import Session, SessionTable, Transfer

__all__ = [
    "AUDIT_KEY",
    "AUDIT_NAMESPACE",
    "EVENTS",
    "TRANSFER_EVENTS",
    "Session",
    "SessionTable",
    "Transfer",
    "audit_fields",
    "emit",
]
