"""SSH certificate authority services: init, sign user keys and host keys, revoke, install.

The CA's private key is an ed25519 key stored encrypted (owner ``ssh_ca/<id>``, name ``private``).
Every certificate issued is recorded (``ssh_certificate``) with its serial, so revocation works by
serial and the key revocation list (KRL, OpenSSH's format, built by ``ssh-keygen -k``) can be
rebuilt from the database at any time. ``install`` puts the CA's public key (for sshd's
``TrustedUserCAKeys``) and the current KRL (for ``RevokedKeys``) on a server over SSH, and can
write the two sshd directives to a config snippet and reload sshd.
"""

from __future__ import annotations

import datetime as dt
import json
import shlex
from typing import Any

from sqlmodel import Session, col, select

from unityctl.core import audit
from unityctl.core.config import SSHConfig
from unityctl.core.crypto import Keyring
from unityctl.core.db import is_postgres, utcnow
from unityctl.core.errors import AlreadyExistsError, NotFoundError, SSHError, StateError, UsageError
from unityctl.creds import keys as keys_svc
from unityctl.creds import servers as servers_svc
from unityctl.creds import sshca
from unityctl.creds.models import SSHCertificate, SSHCertificateAuthority, SSHKey

SECRET_OWNER = "ssh_ca"
DEFAULT_INSTALL_DIR = ".ssh/unityctl-ca"


def get_ca(session: Session, name: str | None = None) -> SSHCertificateAuthority:
    """The CA called ``name``; without a name, the only CA there is. Raises NotFoundError/UsageError."""
    if name is not None:
        ca = session.exec(select(SSHCertificateAuthority).where(SSHCertificateAuthority.name == name)).first()
        if ca is None:
            raise NotFoundError(f"no SSH CA named {name!r} (see `unityctl creds ca list`)")
        return ca
    cas = list(session.exec(select(SSHCertificateAuthority)).all())
    if not cas:
        raise NotFoundError("no SSH CA yet: create one with `unityctl creds ca init`")
    if len(cas) > 1:
        raise UsageError(f"several SSH CAs exist ({', '.join(c.name for c in cas)}): pass --ca NAME")
    return cas[0]


def init_ca(session: Session, keyring: Keyring, *, name: str = "default") -> SSHCertificateAuthority:
    """Create a CA (ed25519 key, encrypted at rest). Raises AlreadyExistsError, UsageError."""
    from unityctl.core.secrets import put_secret

    keys_svc.check_name(name)
    if session.exec(select(SSHCertificateAuthority.id).where(SSHCertificateAuthority.name == name)).first():
        raise AlreadyExistsError(f"an SSH CA named {name!r} already exists")
    material = sshca.create_ca(comment=f"unityctl-ca-{name}")
    ca = SSHCertificateAuthority(name=name, public_key=material.public_openssh,
                                 fingerprint=material.fingerprint_sha256)
    session.add(ca)
    session.flush()
    put_secret(session, keyring, owner_type=SECRET_OWNER, owner_id=ca.id, name="private",
               value=material.private_openssh.encode())
    audit.record(session, keyring, action="creds.ca.init", object_type="ssh_ca", object_id=name,
                 details={"fingerprint": ca.fingerprint})
    return ca


def list_cas(session: Session) -> list[SSHCertificateAuthority]:
    return list(session.exec(select(SSHCertificateAuthority).order_by(SSHCertificateAuthority.name)).all())


def ca_to_dict(session: Session, ca: SSHCertificateAuthority, *, detail: bool = False) -> dict[str, Any]:
    certs = list(session.exec(select(SSHCertificate).where(SSHCertificate.ca_id == ca.id)
                              .order_by(SSHCertificate.serial)).all())
    now = utcnow()
    doc: dict[str, Any] = {"name": ca.name, "fingerprint": ca.fingerprint, "public_key": ca.public_key,
                           "certificates": len(certs), "revoked": sum(1 for c in certs if c.revoked_at),
                           "krl_version": ca.krl_version, "created_at": ca.created_at}
    if detail:
        doc["issued"] = [cert_to_dict(c, now=now) for c in certs]
    return doc


def cert_to_dict(cert: SSHCertificate, *, now: dt.datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    state = ("revoked" if cert.revoked_at else "expired" if cert.valid_before <= now else "valid")
    return {"serial": cert.serial, "type": cert.cert_type, "identity": cert.identity,
            "principals": json.loads(cert.principals), "valid_after": cert.valid_after,
            "valid_before": cert.valid_before, "state": state, "revoked_at": cert.revoked_at,
            "certificate": cert.certificate}


def _ca_private(session: Session, keyring: Keyring, ca: SSHCertificateAuthority) -> str:
    from unityctl.core.secrets import get_secret

    return get_secret(session, keyring, owner_type=SECRET_OWNER, owner_id=ca.id, name="private").decode()


def _take_serial(session: Session, ca: SSHCertificateAuthority) -> int:
    """Reserve the next serial (row lock on PostgreSQL; SQLite write sessions are serialised)."""
    if is_postgres(session):
        ca = session.exec(select(SSHCertificateAuthority).where(SSHCertificateAuthority.id == ca.id)
                          .with_for_update().execution_options(populate_existing=True)).one()
    serial = ca.next_serial
    ca.next_serial = serial + 1
    session.add(ca)
    session.flush()
    return serial


def sign_user(session: Session, keyring: Keyring, *, key_name: str, principals: list[str], valid: str = "8h",
              source_address: list[str] | None = None, force_command: str | None = None,
              ca_name: str | None = None, now: dt.datetime | None = None) -> SSHCertificate:
    """Issue a user certificate for a stored key (back-dated one minute for clock skew).

    Raises UsageError (no principal, bad duration/CIDR), NotFoundError, DecryptionError.
    """
    ca = get_ca(session, ca_name)
    key = keys_svc.get_key(session, key_name)
    if not principals:
        raise UsageError("name at least one --principal (login name)")
    lifetime = sshca.parse_duration(valid)
    serial = _take_serial(session, ca)
    signed = sshca.sign_user_key(_ca_private(session, keyring, ca), key.public_key, serial=serial,
                                 key_id=f"{key.name}@unityctl", principals=principals, valid_for=lifetime,
                                 now=now, source_address=source_address, force_command=force_command)
    cert = SSHCertificate(ca_id=ca.id, serial=serial, cert_type="user", key_id=key.id,  # type: ignore[arg-type]
                          identity=signed.key_id, principals=json.dumps(list(signed.principals)),
                          certificate=signed.cert_line, valid_after=signed.valid_after,
                          valid_before=signed.valid_before)
    session.add(cert)
    session.flush()
    audit.record(session, keyring, action="creds.ca.sign_user", object_type="ssh_key", object_id=key.name,
                 details={"ca": ca.name, "serial": serial, "principals": principals, "valid_before":
                          signed.valid_before.isoformat(), "source_address": source_address,
                          "force_command": force_command})
    return cert


def sign_host(session: Session, keyring: Keyring, *, server_name: str, principals: list[str] | None = None,
              valid: str = "52w", ca_name: str | None = None, ssh: SSHConfig | None = None,
              now: dt.datetime | None = None) -> SSHCertificate:
    """Issue a host certificate for the server's pinned host key (pinned first if never contacted).

    ``principals`` default to the server's host and name. Raises StateError (cannot reach the
    server to learn its key), NotFoundError, UsageError.
    """
    ca = get_ca(session, ca_name)
    server = servers_svc.get_server(session, server_name)
    if not server.host_key:
        doc = servers_svc.login_test(session, keyring, name=server_name, ssh=ssh)
        session.refresh(server)
        if not server.host_key:
            raise StateError(f"cannot learn the host key of {server_name}: {doc.get('error')}")
    host_line = servers_svc.host_key_line(server)
    names = principals or list(dict.fromkeys([server.host, server.name]))
    serial = _take_serial(session, ca)
    signed = sshca.sign_host_key(_ca_private(session, keyring, ca), host_line, serial=serial,
                                 key_id=f"{server.name}@unityctl", principals=names,
                                 valid_for=sshca.parse_duration(valid), now=now)
    cert = SSHCertificate(ca_id=ca.id, serial=serial, cert_type="host", server_id=server.id,  # type: ignore[arg-type]
                          identity=signed.key_id, principals=json.dumps(names), certificate=signed.cert_line,
                          valid_after=signed.valid_after, valid_before=signed.valid_before)
    session.add(cert)
    session.flush()
    audit.record(session, keyring, action="creds.ca.sign_host", object_type="server", object_id=server.name,
                 details={"ca": ca.name, "serial": serial, "principals": names,
                          "host_key_fingerprint": server.host_key_fingerprint,
                          "valid_before": signed.valid_before.isoformat()})
    return cert


def revoke(session: Session, keyring: Keyring, *, what: str, ca_name: str | None = None) -> list[int]:
    """Revoke a certificate by serial, or every certificate of a key (by key name).

    The KRL is rebuilt from the database (``current_krl``); run ``install`` to push it to servers.
    Out: the serials revoked now. Raises NotFoundError, UsageError (nothing to revoke).
    """
    ca = get_ca(session, ca_name)
    query = select(SSHCertificate).where(SSHCertificate.ca_id == ca.id)
    if what.isdigit():
        certs = list(session.exec(query.where(SSHCertificate.serial == int(what))).all())
        if not certs:
            raise NotFoundError(f"CA {ca.name} issued no certificate with serial {what}")
    else:
        key = keys_svc.get_key(session, what)
        certs = list(session.exec(query.where(SSHCertificate.key_id == key.id)).all())
        if not certs:
            raise UsageError(f"CA {ca.name} issued no certificate for key {what}")
    now = utcnow()
    revoked = []
    for cert in certs:
        if cert.revoked_at is None:
            cert.revoked_at = now
            session.add(cert)
            revoked.append(cert.serial)
    ca.krl_version += 1
    session.add(ca)
    session.flush()
    current_krl(session, ca)  # fail now (ssh-keygen missing...), not at install time
    audit.record(session, keyring, action="creds.ca.revoke", object_type="ssh_ca", object_id=ca.name,
                 details={"what": what, "serials": revoked, "krl_version": ca.krl_version})
    return revoked


def current_krl(session: Session, ca: SSHCertificateAuthority) -> bytes:
    """The KRL revoking every revoked serial of this CA (empty but valid when none)."""
    serials = [c.serial for c in session.exec(select(SSHCertificate).where(
        SSHCertificate.ca_id == ca.id, col(SSHCertificate.revoked_at).is_not(None))).all()]
    return sshca.build_krl(ca.public_key, revoked_serials=sorted(serials), revoked_public_keys=[])


def install(session: Session, keyring: Keyring, *, server_name: str, ca_name: str | None = None,
            directory: str = DEFAULT_INSTALL_DIR, sshd_config: str | None = None, reload: str | None = None,
            ssh: SSHConfig | None = None) -> dict[str, Any]:
    """Install the CA public key and the current KRL on a server over SSH.

    Files: ``<directory>/ca.pub`` (TrustedUserCAKeys) and ``<directory>/revoked.krl`` (RevokedKeys),
    written atomically, mode 0644 (sshd reads them as root; they hold no secret). ``directory`` is
    relative to the login user's home unless absolute. With ``sshd_config`` (e.g.
    ``/etc/ssh/sshd_config.d/unityctl-ca.conf``, needs a login allowed to write it) the two
    directives are written there; ``reload`` (e.g. ``sudo systemctl reload ssh``) runs afterwards.
    Out: paths, the directives, and ``reload_error`` (None when fine).
    Raises SSHError subclasses when the files cannot be written.
    """
    ca = get_ca(session, ca_name)
    server = servers_svc.get_server(session, server_name)
    target = servers_svc.target_for(session, keyring, server, ssh=ssh)
    krl = current_krl(session, ca)
    reload_error = None
    with servers_svc.ssh_executor(session, keyring) as executor:
        try:
            home = executor.run(target, 'printf %s "$HOME"').stdout.strip()
            base = directory if directory.startswith("/") else f"{home.rstrip('/')}/{directory}"
            ca_path, krl_path = f"{base}/ca.pub", f"{base}/revoked.krl"
            executor.write_file(target, ca_path, ca.public_key.strip() + "\n", 0o644, make_parents=True)
            executor.write_file(target, krl_path, krl, 0o644, make_parents=True)
            executor.run(target, f"chmod 755 {shlex.quote(base)}")
            directives = f"TrustedUserCAKeys {ca_path}\nRevokedKeys {krl_path}\n"
            if sshd_config:
                executor.write_file(target, sshd_config, directives, 0o644)
            if reload:
                result = executor.run(target, reload, check=False)
                if result.exit_code != 0:
                    reload_error = (f"`{reload}` exited {result.exit_code}: "
                                    f"{(result.stderr.strip().splitlines() or [''])[0][:200]}")
        except SSHError as exc:
            servers_svc.record_login(session, server, str(exc))
            raise
    servers_svc.record_login(session, server)
    audit.record(session, keyring, action="creds.ca.install", object_type="server", object_id=server.name,
                 outcome="ok" if reload_error is None else "partial",
                 details={"ca": ca.name, "ca_path": ca_path, "krl_path": krl_path, "krl_version": ca.krl_version,
                          "sshd_config": sshd_config, "reload": reload, "reload_error": reload_error})
    return {"server": server.name, "ca": ca.name, "ca_path": ca_path, "krl_path": krl_path,
            "krl_version": ca.krl_version, "sshd_config": sshd_config, "directives": directives.splitlines(),
            "reload_error": reload_error}


def latest_user_certificate(session: Session, key: SSHKey) -> SSHCertificate | None:
    """The newest valid, unrevoked user certificate of a key (to log in with), or None."""
    return session.exec(select(SSHCertificate).where(
        SSHCertificate.key_id == key.id, SSHCertificate.cert_type == "user",
        col(SSHCertificate.revoked_at).is_(None), SSHCertificate.valid_before > utcnow())
        .order_by(col(SSHCertificate.serial).desc())).first()


__all__ = ["ca_to_dict", "cert_to_dict", "current_krl", "get_ca", "init_ca", "install", "latest_user_certificate",
           "list_cas", "revoke", "sign_host", "sign_user"]
