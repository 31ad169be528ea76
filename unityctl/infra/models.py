"""Tables of the infrastructure domain. A MonitoredServer logs in through a creds ServerCredential
(``credential_id``), never through a copy of a secret of its own; ``local`` servers need none."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import BigInteger, Column, ForeignKey, Index, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from unityctl.core.db import UTCDateTime, utcnow


def _fk(target: str, *, nullable: bool = True, ondelete: str = "CASCADE") -> Column:  # type: ignore[type-arg]
    return Column(Integer, ForeignKey(target, ondelete=ondelete), nullable=nullable, index=True)


class MonitoredServer(SQLModel, table=True):
    """A server whose health unityctl collects, and its latest snapshot.

    ``state``: up | down | unknown. ``down`` only after ``infra.offline_after_failures`` failed
    collections in a row; ``up`` again after ``infra.online_after_successes`` good ones.
    """

    __tablename__ = "monitored_server"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    credential_id: int | None = Field(default=None, sa_column=_fk("server_credential.id", ondelete="RESTRICT"))
    local: bool = False
    interval_seconds: int = 300
    tags: str = Field(default="[]", sa_type=Text)
    state: str = Field(default="unknown", max_length=20)
    consecutive_failures: int = 0
    consecutive_successes: int = 0
    last_seen_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_collect_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    next_collect_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime, index=True)
    last_error: str | None = Field(default=None, sa_type=Text)
    os_name: str | None = Field(default=None, max_length=200)
    kernel: str | None = Field(default=None, max_length=200)
    cpu_count: int | None = None
    uptime_seconds: int | None = None
    load1: float | None = None
    load5: float | None = None
    load15: float | None = None
    mem_total_kb: int | None = None
    mem_used_percent: float | None = None
    fs_max_percent: float | None = None
    fs_max_mount: str | None = Field(default=None, max_length=500)
    filesystems: str = Field(default="[]", sa_type=Text)
    notes: str = Field(default="[]", sa_type=Text)
    lease_owner: str | None = Field(default=None, max_length=200)
    lease_until: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class MetricSample(SQLModel, table=True):
    """One point of a server's history: raw (every collection) or hourly (downsampled averages)."""

    __tablename__ = "metric_sample"
    __table_args__ = (Index("ix_metric_sample_server_ts", "server_id", "resolution", "ts"),)
    id: int | None = Field(default=None, primary_key=True)
    server_id: int = Field(sa_column=Column(Integer, ForeignKey("monitored_server.id", ondelete="CASCADE"),
                                            nullable=False))
    ts: dt.datetime = Field(sa_type=UTCDateTime)
    resolution: str = Field(default="raw", max_length=10)  # raw | hour
    load1: float | None = None
    mem_percent: float | None = None
    disk_percent: float | None = None


class StorageDevice(SQLModel, table=True):
    """A physical disk, identified by serial number so its history follows it between servers.

    ``verdict``: passed | warn | failed | standby | unknown; ``reasons`` in words (JSON list);
    ``baseline``: accepted raw values of critical counters ({attribute id: raw}).
    """

    __tablename__ = "storage_device"
    id: int | None = Field(default=None, primary_key=True)
    serial: str = Field(max_length=200, unique=True)
    server_id: int | None = Field(default=None, sa_column=_fk("monitored_server.id", ondelete="SET NULL"))
    device: str = Field(default="", max_length=200)
    model: str = Field(default="", max_length=200)
    protocol: str = Field(default="", max_length=20)  # ata | nvme | scsi
    capacity_bytes: int | None = Field(default=None, sa_type=BigInteger)  # disks pass 2 GiB
    verdict: str = Field(default="unknown", max_length=20)
    reasons: str = Field(default="[]", sa_type=Text)
    temperature_c: int | None = None
    power_on_hours: int | None = None
    counters: str = Field(default="{}", sa_type=Text)
    baseline: str = Field(default="{}", sa_type=Text)
    first_seen_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_seen_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class StoragePool(SQLModel, table=True):
    """A ZFS pool or md RAID array on a server; ``members`` maps each member to its device (JSON)."""

    __tablename__ = "storage_pool"
    __table_args__ = (UniqueConstraint("server_id", "kind", "name", name="uq_storage_pool"),)
    id: int | None = Field(default=None, primary_key=True)
    server_id: int = Field(sa_column=_fk("monitored_server.id", nullable=False))
    kind: str = Field(max_length=10)  # zfs | md
    name: str = Field(max_length=200)
    state: str = Field(default="", max_length=30)
    health: str = Field(default="ok", max_length=20)  # ok | warn | critical
    level: str = Field(default="", max_length=30)
    capacity_percent: float | None = None
    fragmentation_percent: float | None = None
    scan: str = Field(default="{}", sa_type=Text)
    members: str = Field(default="[]", sa_type=Text)
    reasons: str = Field(default="[]", sa_type=Text)
    last_seen_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class DatabaseInstance(SQLModel, table=True):
    """A database server found on a monitored server, keyed by kind and port or socket path."""

    __tablename__ = "database_instance"
    __table_args__ = (UniqueConstraint("server_id", "key", name="uq_database_instance"),)
    id: int | None = Field(default=None, primary_key=True)
    server_id: int = Field(sa_column=_fk("monitored_server.id", nullable=False))
    kind: str = Field(max_length=20)
    key: str = Field(max_length=300)
    address: str | None = Field(default=None, max_length=200)
    port: int | None = None
    socket_path: str | None = Field(default=None, max_length=500)
    process: str | None = Field(default=None, max_length=100)
    version: str | None = Field(default=None, max_length=200)
    reachable: bool | None = None
    detail: str | None = Field(default=None, sa_type=Text)
    latency_ms: float | None = None
    last_checked_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_seen_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
