"""Tables owned by core: settings metadata, encrypted secrets, the audit chain, alerts and channels."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Column, ForeignKey, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from unityctl.core.db import UTCDateTime, utcnow


class Meta(SQLModel, table=True):
    """Small key/value facts about this database: key id of the master key, audit head, ..."""

    __tablename__ = "meta"
    key: str = Field(primary_key=True, max_length=100)
    value: str = Field(sa_type=Text)


class Secret(SQLModel, table=True):
    """One encrypted secret (envelope encryption; see unityctl.core.secrets).

    The associated data binds (owner_type, owner_id, name): a ciphertext copied into another row,
    or onto another owner, fails authentication.
    """

    __tablename__ = "secret"
    __table_args__ = (UniqueConstraint("owner_type", "owner_id", "name", name="uq_secret_owner"),)
    id: int | None = Field(default=None, primary_key=True)
    owner_type: str = Field(max_length=50, index=True)
    owner_id: str = Field(max_length=100)
    name: str = Field(max_length=50)
    kek_id: str = Field(max_length=32)
    wrapped_key: bytes
    nonce: bytes
    ciphertext: bytes
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    updated_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class AuditEntry(SQLModel, table=True):
    """One row of the tamper-evident audit chain: ``mac = HMAC(k_audit, prev_mac || canonical_json)``."""

    __tablename__ = "audit_log"
    id: int | None = Field(default=None, primary_key=True)
    seq: int = Field(unique=True, index=True)
    ts: dt.datetime = Field(sa_type=UTCDateTime, index=True)
    actor: str = Field(max_length=200)
    action: str = Field(max_length=100, index=True)
    object_type: str = Field(max_length=50)
    object_id: str = Field(max_length=200)
    outcome: str = Field(max_length=20)
    details: str = Field(sa_type=Text)
    prev_mac: str = Field(max_length=64)
    mac: str = Field(max_length=64)


class AuditArchive(SQLModel, table=True):
    """A block of audit rows moved to a JSONL file; its last MAC anchors the chain left in the table."""

    __tablename__ = "audit_archive"
    id: int | None = Field(default=None, primary_key=True)
    first_seq: int
    last_seq: int = Field(unique=True)
    last_mac: str = Field(max_length=64)
    path: str = Field(sa_type=Text)
    sha256: str = Field(max_length=64)
    rows: int
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Alert(SQLModel, table=True):
    """An alert, unique by dedup key: raised again it is updated (count, last_seen), never duplicated."""

    __tablename__ = "alert"
    id: int | None = Field(default=None, primary_key=True)
    type: str = Field(max_length=50, index=True)
    severity: str = Field(max_length=20)
    source_type: str = Field(max_length=50)
    source_id: str = Field(max_length=200)
    dedup_key: str = Field(max_length=300, unique=True)
    message: str = Field(sa_type=Text)
    details: str = Field(default="{}", sa_type=Text)
    state: str = Field(default="open", max_length=20, index=True)
    first_seen: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_seen: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    count: int = 1
    resolved_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    snoozed_until: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    acknowledged_by: str | None = Field(default=None, max_length=200)
    last_notified_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    notified_severity: str | None = Field(default=None, max_length=20)
    notify_count: int = 0


class AlertChannel(SQLModel, table=True):
    """Where notifications go. Anything secret (URLs with tokens, SMTP passwords) is in ``secret``."""

    __tablename__ = "alert_channel"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    kind: str = Field(max_length=20)
    settings: str = Field(default="{}", sa_type=Text)
    min_severity: str = Field(default="warning", max_length=20)
    enabled: bool = True
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class NotificationLog(SQLModel, table=True):
    """Every delivery attempt of a notification and its result; failed ones are retried later."""

    __tablename__ = "notification_log"
    id: int | None = Field(default=None, primary_key=True)
    alert_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("alert.id", ondelete="CASCADE"), index=True))
    channel_id: int | None = Field(
        default=None, sa_column=Column(Integer, ForeignKey("alert_channel.id", ondelete="SET NULL"), index=True))
    channel_name: str = Field(max_length=100)
    event: str = Field(max_length=20)
    attempt: int = 1
    status: str = Field(max_length=20, index=True)
    error: str | None = Field(default=None, sa_type=Text)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    next_retry_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
