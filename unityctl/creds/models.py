"""Tables of the credentials domain. Private keys and passwords are never columns here: they live
encrypted in core's ``secret`` table (owner_type ``ssh_key``, ``server_credential``, ``ssh_ca``,
``certificate``)."""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Column, ForeignKey, Integer, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from unityctl.core.db import UTCDateTime, utcnow


def _fk(target: str, *, nullable: bool = True, ondelete: str = "RESTRICT") -> Column:  # type: ignore[type-arg]
    return Column(Integer, ForeignKey(target, ondelete=ondelete), nullable=nullable, index=True)


class SSHKey(SQLModel, table=True):
    """An SSH key pair. ``status``: active | retired (replaced by rotation) | revoked."""

    __tablename__ = "ssh_key"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    key_type: str = Field(max_length=20)
    bits: int
    fingerprint: str = Field(max_length=100, index=True)
    public_key: str = Field(sa_type=Text)
    comment: str = Field(default="", max_length=200)
    weakness: str | None = Field(default=None, max_length=200)
    status: str = Field(default="active", max_length=20)
    source: str = Field(default="generated", max_length=20)
    replaced_by_id: int | None = Field(default=None, sa_column=_fk("ssh_key.id", ondelete="SET NULL"))
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    last_used_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)


class ServerCredential(SQLModel, table=True):
    """How to log in to a server: host, port, user, and a key or a password; the pinned host key."""

    __tablename__ = "server_credential"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    host: str = Field(max_length=255)
    port: int = 22
    username: str = Field(max_length=100)
    auth_type: str = Field(max_length=20)  # key | password
    key_id: int | None = Field(default=None, sa_column=_fk("ssh_key.id"))
    jump_id: int | None = Field(default=None, sa_column=_fk("server_credential.id"))
    host_key: str | None = Field(default=None, sa_type=Text)
    host_key_fingerprint: str | None = Field(default=None, max_length=100)
    host_key_pinned_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_login_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, sa_type=Text)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class KeyDeployment(SQLModel, table=True):
    """A key's line in a server's authorized_keys, as unityctl put it there.

    ``status``: deployed | removed | out_of_date (a rotation could not reach the server) | failed.
    """

    __tablename__ = "key_deployment"
    __table_args__ = (UniqueConstraint("key_id", "server_id", name="uq_key_deployment"),)
    id: int | None = Field(default=None, primary_key=True)
    key_id: int = Field(sa_column=_fk("ssh_key.id", nullable=False, ondelete="CASCADE"))
    server_id: int = Field(sa_column=_fk("server_credential.id", nullable=False, ondelete="CASCADE"))
    options: str | None = Field(default=None, sa_type=Text)
    status: str = Field(default="deployed", max_length=20)
    rotation_id: int | None = Field(default=None, sa_column=_fk("key_rotation.id", ondelete="SET NULL"))
    deployed_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    removed_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, sa_type=Text)


class KeyRotation(SQLModel, table=True):
    """One rotation of a key: old -> new, and whether every server has been moved over."""

    __tablename__ = "key_rotation"
    id: int | None = Field(default=None, primary_key=True)
    old_key_id: int = Field(sa_column=_fk("ssh_key.id", nullable=False))
    new_key_id: int = Field(sa_column=_fk("ssh_key.id", nullable=False))
    status: str = Field(default="in_progress", max_length=20)  # in_progress | partial | complete
    started_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)


class SSHCertificateAuthority(SQLModel, table=True):
    """An SSH CA key (private part encrypted in ``secret``), its serial counter and KRL version."""

    __tablename__ = "ssh_ca"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=100, unique=True)
    public_key: str = Field(sa_type=Text)
    fingerprint: str = Field(max_length=100)
    next_serial: int = 1
    krl_version: int = 0
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class SSHCertificate(SQLModel, table=True):
    """A certificate the CA signed (user or host), kept for revocation and inventory."""

    __tablename__ = "ssh_certificate"
    __table_args__ = (UniqueConstraint("ca_id", "serial", name="uq_ssh_cert_serial"),)
    id: int | None = Field(default=None, primary_key=True)
    ca_id: int = Field(sa_column=_fk("ssh_ca.id", nullable=False, ondelete="CASCADE"))
    serial: int
    cert_type: str = Field(max_length=10)  # user | host
    key_id: int | None = Field(default=None, sa_column=_fk("ssh_key.id", ondelete="SET NULL"))
    server_id: int | None = Field(default=None, sa_column=_fk("server_credential.id", ondelete="SET NULL"))
    identity: str = Field(max_length=200)
    principals: str = Field(default="[]", sa_type=Text)
    certificate: str = Field(sa_type=Text)
    valid_after: dt.datetime = Field(sa_type=UTCDateTime)
    valid_before: dt.datetime = Field(sa_type=UTCDateTime)
    revoked_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class StepCAConfig(SQLModel, table=True):
    """A step-ca instance reached through its ACME endpoint, with its pinned root fingerprint."""

    __tablename__ = "step_ca_config"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(default="default", max_length=100, unique=True)
    url: str = Field(max_length=500)
    root_fingerprint: str = Field(max_length=100)
    provisioner: str = Field(default="acme", max_length=100)
    root_pem: str | None = Field(default=None, sa_type=Text)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class Certificate(SQLModel, table=True):
    """A TLS certificate (issued through ACME/step-ca, or imported); its key is in ``secret``.

    ``status``: valid | expired | revoked. ``request`` holds the issuance parameters (JSON) so
    renewal repeats them.
    """

    __tablename__ = "certificate"
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=200, unique=True)
    domains: str = Field(sa_type=Text)  # JSON list
    provider: str = Field(max_length=20)  # acme | step-ca | imported
    request: str = Field(default="{}", sa_type=Text)
    issuer: str = Field(default="", sa_type=Text)
    serial: str = Field(default="", max_length=100)
    fingerprint: str = Field(default="", max_length=100)
    key_type: str = Field(default="", max_length=30)
    not_before: dt.datetime = Field(sa_type=UTCDateTime)
    not_after: dt.datetime = Field(sa_type=UTCDateTime, index=True)
    cert_pem: str = Field(sa_type=Text)
    chain_pem: str = Field(default="", sa_type=Text)
    status: str = Field(default="valid", max_length=20)
    endpoint: str | None = Field(default=None, max_length=300)
    renewed_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    created_at: dt.datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)


class CertificateDeployment(SQLModel, table=True):
    """Where a certificate was installed over SSH, and whether its reload worked."""

    __tablename__ = "certificate_deployment"
    __table_args__ = (UniqueConstraint("certificate_id", "server_id", "cert_path", name="uq_cert_deployment"),)
    id: int | None = Field(default=None, primary_key=True)
    certificate_id: int = Field(sa_column=_fk("certificate.id", nullable=False, ondelete="CASCADE"))
    server_id: int = Field(sa_column=_fk("server_credential.id", nullable=False, ondelete="CASCADE"))
    cert_path: str = Field(max_length=500)
    key_path: str = Field(max_length=500)
    reload_command: str | None = Field(default=None, sa_type=Text)
    fingerprint: str = Field(default="", max_length=100)
    status: str = Field(default="deployed", max_length=20)  # deployed | reload_failed | failed
    deployed_at: dt.datetime | None = Field(default=None, sa_type=UTCDateTime)
    last_error: str | None = Field(default=None, sa_type=Text)
