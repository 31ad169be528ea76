"""TLS certificates: issue (ACME / step-ca), import, list, renew, revoke, deploy over SSH, check.

The certificate, its chain and the issuance parameters are columns of ``Certificate``; the
private key is a secret (owner_type ``certificate``, name ``private_key``) and never leaves this
module except towards certbot (revocation) or a server's key file (deploy).

Issuance and renewal talk to the CA through :mod:`unityctl.creds.acme` (certbot in-process,
private directories, output captured), so nothing of certbot reaches stdout. ``Certificate.request``
keeps what is needed to repeat the order (server, challenge, mode, ports, key type, e-mail, the
CA bundle's PEM, the step-ca configuration's name): ``renew`` repeats it, which in ACME *is* a
renewal (a new order, a new key, a new serial).

Renewal is due per :func:`unityctl.creds.x509info.is_due` with ``settings.creds.renew_before_days``:
when the time left is at most min(that many days, a third of the lifetime).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlmodel import Session, col, select

from unityctl.core import audit
from unityctl.core.crypto import Keyring
from unityctl.core.db import release_locks, utcnow
from unityctl.core.errors import (
    AlreadyExistsError,
    NotFoundError,
    ParseError,
    RemoteCommandError,
    StateError,
    UnityctlError,
    UsageError,
)
from unityctl.creds.models import Certificate, CertificateDeployment, ServerCredential

if TYPE_CHECKING:  # pragma: no cover
    from unityctl.core.config import Settings
    from unityctl.creds.acme import AcmeRequest, IssuedCertificate
    from unityctl.creds.x509info import CertInfo

__all__ = [
    "CheckItem",
    "DeployResult",
    "RenewResult",
    "check",
    "deploy",
    "expiry_dedup_key",
    "get",
    "import_certificate",
    "issue",
    "list_certificates",
    "private_key",
    "renew",
    "revoke",
    "show",
    "to_dict",
]

OWNER_TYPE = "certificate"
KEY_SECRET = "private_key"
PROVIDERS = ("acme", "step-ca")
RELOAD_ALERT = "certificate_reload_failed"
_ENDPOINT_RE = re.compile(r"^(?:\[(?P<ip6>[0-9a-fA-F:.]+)\]|(?P<host>[^\s:/\[\]]+)):(?P<port>\d{1,5})$")


def expiry_dedup_key(cert_id: int) -> str:
    """The dedup key of a certificate's expiry alert (see unityctl.creds.expiry)."""
    return f"certificate_expiring:certificate:{cert_id}"


def reload_dedup_key(deployment_id: int) -> str:
    return f"{RELOAD_ALERT}:certificate_deployment:{deployment_id}"


def parse_endpoint(endpoint: str) -> tuple[str, int]:
    """``host:port`` (``[v6]:port``) -> (host, port); UsageError otherwise."""
    match = _ENDPOINT_RE.match(endpoint.strip())
    port = int(match.group("port")) if match else 0
    if not match or not 0 < port < 65536:
        raise UsageError(f"endpoint {endpoint!r} is not HOST:PORT (e.g. www.example.org:443)")
    return (match.group("ip6") or match.group("host")), port


# --- reading ------------------------------------------------------------------------------------


def get(session: Session, name: str) -> Certificate:
    """The certificate called ``name``; NotFoundError otherwise."""
    cert = session.exec(select(Certificate).where(Certificate.name == name)).first()
    if cert is None:
        raise NotFoundError(f"no certificate named {name!r} (see `unityctl creds certs list`)")
    return cert


def list_certificates(session: Session) -> list[Certificate]:
    """Every certificate, soonest expiry first."""
    return list(session.exec(select(Certificate).order_by(col(Certificate.not_after), col(Certificate.name))))


def _aware(value: dt.datetime) -> dt.datetime:
    # SQLite hands back naive datetimes for values written as UTC.
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def days_left(cert: Certificate, now: dt.datetime) -> float:
    return (_aware(cert.not_after) - now).total_seconds() / 86400.0


def effective_status(cert: Certificate, now: dt.datetime) -> str:
    """revoked | expired | valid, judged now (the stored status is not re-written on every read)."""
    if cert.status == "revoked":
        return "revoked"
    return "expired" if _aware(cert.not_after) <= now else "valid"


def _info(cert: Certificate) -> CertInfo:
    from unityctl.creds.x509info import CertInfo

    return CertInfo(subject_cn=None, domains=tuple(json.loads(cert.domains)), issuer=cert.issuer,
                    serial_hex=cert.serial, not_before=_aware(cert.not_before),
                    not_after=_aware(cert.not_after), fingerprint_sha256=cert.fingerprint,
                    key_type=cert.key_type)


def is_due(cert: Certificate, now: dt.datetime, renew_before_days: float) -> bool:
    """Renewal due for ``cert`` (x509info.is_due on its stored dates)."""
    from unityctl.creds import x509info

    return x509info.is_due(_info(cert), now, renew_before_days)


def to_dict(cert: Certificate, *, now: dt.datetime | None = None, renew_before_days: float = 30) -> dict[str, Any]:
    """Inventory data of one certificate (no key, no PEM)."""
    now = now or utcnow()
    request = json.loads(cert.request or "{}")
    return {
        "name": cert.name,
        "domains": json.loads(cert.domains),
        "provider": cert.provider,
        "issuer": cert.issuer,
        "serial": cert.serial,
        "fingerprint": cert.fingerprint,
        "key_type": cert.key_type,
        "not_before": _aware(cert.not_before),
        "not_after": _aware(cert.not_after),
        "days_left": round(days_left(cert, now), 2),
        "status": effective_status(cert, now),
        "renewal_due": cert.provider != "imported" and cert.status != "revoked"
        and is_due(cert, now, renew_before_days),
        "endpoint": cert.endpoint,
        "acme_server": request.get("server"),
        "renewed_at": cert.renewed_at,
        "created_at": cert.created_at,
    }


def _public_request(cert: Certificate) -> dict[str, Any]:
    request = json.loads(cert.request or "{}")
    bundle = request.pop("ca_bundle_pem", None)
    if bundle:
        from unityctl.creds.x509info import split_chain

        request["ca_bundle"] = f"stored ({len(split_chain(bundle))} certificate(s))"
    return request


def show(session: Session, name: str, *, now: dt.datetime | None = None,
         renew_before_days: float = 30) -> dict[str, Any]:
    """Everything about one certificate except its private key: inventory data, the request it
    was issued with, the PEMs, and where it is deployed."""
    cert = get(session, name)
    doc = to_dict(cert, now=now, renew_before_days=renew_before_days)
    doc["request"] = _public_request(cert)
    doc["certificate_pem"] = cert.cert_pem
    doc["chain_pem"] = cert.chain_pem
    rows = session.exec(select(CertificateDeployment, ServerCredential)
                        .join(ServerCredential, col(ServerCredential.id) == col(CertificateDeployment.server_id))
                        .where(CertificateDeployment.certificate_id == cert.id)
                        .order_by(col(ServerCredential.name), col(CertificateDeployment.cert_path))).all()
    doc["deployments"] = [{
        "server": server.name, "cert_path": dep.cert_path, "key_path": dep.key_path,
        "reload_command": dep.reload_command, "status": dep.status, "deployed_at": dep.deployed_at,
        "current": dep.fingerprint == cert.fingerprint, "last_error": dep.last_error,
    } for dep, server in rows]
    return doc


def private_key(session: Session, keyring: Keyring, cert: Certificate) -> str:
    """Decrypt the certificate's private key (PEM). For deploy/revoke only: never print it."""
    from unityctl.core.secrets import get_secret

    return get_secret(session, keyring, owner_type=OWNER_TYPE, owner_id=cert.id, name=KEY_SECRET).decode()


# --- storing ------------------------------------------------------------------------------------


def _check_new_name(session: Session, name: str) -> None:
    if not name or len(name) > 200 or any(c.isspace() for c in name):
        raise UsageError(f"certificate name {name!r} must be 1-200 characters without spaces")
    if session.exec(select(Certificate).where(Certificate.name == name)).first() is not None:
        raise AlreadyExistsError(f"a certificate named {name!r} already exists "
                                 "(renew it, or choose another --name)")


def _apply(cert: Certificate, info: CertInfo, cert_pem: str, chain_pem: str) -> None:
    cert.domains = json.dumps(list(info.domains) or ([info.subject_cn] if info.subject_cn else []))
    cert.issuer, cert.serial, cert.fingerprint = info.issuer, info.serial_hex, info.fingerprint_sha256
    cert.key_type, cert.not_before, cert.not_after = info.key_type, info.not_before, info.not_after
    cert.cert_pem, cert.chain_pem = cert_pem, chain_pem


def _store_key(session: Session, keyring: Keyring, cert: Certificate, key_pem: str) -> None:
    from unityctl.core.secrets import put_secret

    put_secret(session, keyring, owner_type=OWNER_TYPE, owner_id=cert.id, name=KEY_SECRET,
               value=key_pem.encode())


def import_certificate(session: Session, keyring: Keyring, *, cert_pem: str, key_pem: str,
                       chain_pem: str = "", name: str | None = None,
                       endpoint: str | None = None) -> Certificate:
    """Store a certificate obtained elsewhere, with its key (encrypted) and chain.

    In: the certificate PEM (a full chain is accepted: the first block is the leaf, the rest the
        chain), the unencrypted private key PEM, an optional chain PEM, a name (default: the first
        domain), an optional ``host:port`` endpoint for ``certs check``.
    Out: the new Certificate (provider "imported"), audited as ``creds.certs.import``.
    Raises: ParseError (bad PEM; the key does not match the certificate; a passphrase-protected
        key), AlreadyExistsError, UsageError. Nothing is stored when it raises.
    """
    from unityctl.creds.x509info import key_matches_certificate, parse_certificate, split_chain

    blocks = split_chain(cert_pem)
    leaf = blocks[0]
    chain = "".join(blocks[1:]) + ("".join(split_chain(chain_pem)) if chain_pem.strip() else "")
    info = parse_certificate(leaf)
    if not key_matches_certificate(leaf, key_pem):
        raise ParseError("the private key does not match the certificate (their public keys "
                         "differ); nothing was imported")
    if endpoint:
        parse_endpoint(endpoint)
    name = name or (info.domains[0] if info.domains else info.subject_cn) or ""
    _check_new_name(session, name)
    cert = Certificate(name=name, domains="[]", provider="imported", request="{}",
                       not_before=info.not_before, not_after=info.not_after, cert_pem=leaf,
                       endpoint=endpoint)
    _apply(cert, info, leaf, chain)
    session.add(cert)
    session.flush()
    _store_key(session, keyring, cert, key_pem)
    audit.record(session, keyring, action="creds.certs.import", object_type="certificate",
                 object_id=name, details={"domains": list(info.domains), "serial": info.serial_hex,
                                          "fingerprint": info.fingerprint_sha256,
                                          "not_after": info.not_after.isoformat()})
    return cert


# --- ACME ---------------------------------------------------------------------------------------


@contextmanager
def _acme_request(session: Session, cert_domains: Sequence[str], request: dict[str, Any]) -> Iterator[AcmeRequest]:
    """An AcmeRequest from stored parameters; a stored CA bundle is written to a private temp
    file for the duration (certbot/requests want a path)."""
    from unityctl.creds import acme, stepca

    server = request["server"]
    bundle_pem = request.get("ca_bundle_pem")
    if request.get("step_ca"):
        config = stepca.get_config(session, request["step_ca"])
        server, bundle_pem = stepca.directory_url(config), config.root_pem
    tmp = Path(tempfile.mkdtemp(prefix="unityctl-cabundle-"))
    try:
        bundle_path = None
        if bundle_pem:
            bundle_path = tmp / "ca-bundle.pem"
            bundle_path.write_text(bundle_pem)
        yield acme.AcmeRequest(
            domains=list(cert_domains), server=server, challenge=request.get("challenge", "http-01"),
            mode=request.get("mode", "standalone"), http_port=int(request.get("http_port", 80)),
            http_address=request.get("http_address", ""), webroot=request.get("webroot"),
            key_type=request.get("key_type", "ecdsa"), email=request.get("email"),
            ca_bundle=bundle_path,
        )
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def issue(session: Session, keyring: Keyring, *, domains: Sequence[str], name: str | None = None,
          provider: str = "acme", server: str = "letsencrypt", challenge: str = "http-01",
          mode: str = "standalone", http_port: int = 80, http_address: str = "",
          webroot: str | None = None, key_type: str = "ecdsa", email: str | None = None,
          ca_bundle_pem: str | None = None, step_ca: str = "default",
          endpoint: str | None = None) -> Certificate:
    """Obtain a certificate from an ACME CA (Let's Encrypt, any RFC 8555 CA, or step-ca) and store it.

    In: the domains (first = name default), ``provider`` "acme" (``server``: URL or alias, its
        HTTPS trusted through ``ca_bundle_pem`` or the system store) or "step-ca" (directory and
        pinned root from the StepCAConfig ``step_ca``); the http-01 ``mode`` ("standalone" on
        ``http_address:http_port``, or "webroot" with ``webroot``); key type; e-mail; endpoint.
    Out: the stored Certificate (key encrypted), audited as ``creds.certs.issue``.
    Raises: UsageError (bad parameters), AlreadyExistsError (name taken: checked before the CA is
        asked), NotFoundError (no step-ca configuration), ProviderError (the CA refused, one line).
    """
    from unityctl.creds import acme

    if provider not in PROVIDERS:
        raise UsageError(f"provider {provider!r} is not one of {', '.join(PROVIDERS)}")
    domains = [d.strip().lower() for d in domains if d and d.strip()]
    if not domains:
        raise UsageError("give at least one domain")
    name = name or domains[0]
    _check_new_name(session, name)
    if endpoint:
        parse_endpoint(endpoint)
    request: dict[str, Any] = {"challenge": challenge, "mode": mode, "http_port": http_port,
                               "http_address": http_address, "webroot": webroot,
                               "key_type": key_type, "email": email}
    if provider == "step-ca":
        from unityctl.creds import stepca

        config = stepca.get_config(session, step_ca)
        request.update(server=stepca.directory_url(config), step_ca=config.name)
    else:
        request.update(server=acme.resolve_server(server), ca_bundle_pem=ca_bundle_pem or None)
    with _acme_request(session, domains, request) as req:
        release_locks(session)
        issued = acme.issue(req)
    _check_new_name(session, name)  # the database was free to others while the CA worked
    cert = Certificate(name=name, domains="[]", provider=provider, request=json.dumps(request),
                       not_before=issued.info.not_before, not_after=issued.info.not_after,
                       cert_pem=issued.cert_pem, endpoint=endpoint)
    _apply(cert, issued.info, issued.cert_pem, issued.chain_pem)
    session.add(cert)
    session.flush()
    _store_key(session, keyring, cert, issued.key_pem)
    audit.record(session, keyring, action="creds.certs.issue", object_type="certificate",
                 object_id=name, details={"domains": domains, "provider": provider,
                                          "server": request["server"], "serial": issued.info.serial_hex,
                                          "not_after": issued.info.not_after.isoformat()})
    return cert


@dataclass
class RenewResult:
    """One certificate's outcome in ``renew``: renewed | not_due | skipped | failed."""

    name: str
    outcome: str
    detail: str = ""
    old_serial: str = ""
    serial: str = ""
    not_after: dt.datetime | None = None
    stale_deployments: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _renew_one(session: Session, keyring: Keyring, cert: Certificate) -> RenewResult:
    from unityctl.core.alerts import clear_alert
    from unityctl.creds import acme

    old_serial = cert.serial
    try:
        with _acme_request(session, json.loads(cert.domains), json.loads(cert.request)) as req:
            release_locks(session)
            issued: IssuedCertificate = acme.renew(req)
    except UnityctlError as exc:
        audit.record(session, keyring, action="creds.certs.renew", object_type="certificate",
                     object_id=cert.name, outcome="failed", details={"error": str(exc)})
        return RenewResult(cert.name, "failed", str(exc), old_serial=old_serial, serial=old_serial,
                           not_after=_aware(cert.not_after))
    _apply(cert, issued.info, issued.cert_pem, issued.chain_pem)
    cert.status, cert.renewed_at = "valid", utcnow()
    session.add(cert)
    _store_key(session, keyring, cert, issued.key_pem)
    clear_alert(session, dedup_key=expiry_dedup_key(cert.id))  # type: ignore[arg-type]
    stale = len(session.exec(select(CertificateDeployment).where(
        CertificateDeployment.certificate_id == cert.id)).all())
    audit.record(session, keyring, action="creds.certs.renew", object_type="certificate",
                 object_id=cert.name, details={"old_serial": old_serial, "serial": issued.info.serial_hex,
                                               "not_after": issued.info.not_after.isoformat()})
    detail = f"deployed to {stale} place(s): run `certs deploy` again" if stale else ""
    return RenewResult(cert.name, "renewed", detail, old_serial=old_serial, serial=issued.info.serial_hex,
                       not_after=issued.info.not_after, stale_deployments=stale)


def renew(session: Session, keyring: Keyring, *, name: str | None = None, due: bool = False,
          all_: bool = False, renew_before_days: float = 30,
          now: dt.datetime | None = None) -> list[RenewResult]:
    """Renew one certificate (``name``: always, due or not), the due ones (``due``), or all
    renewable ones (``all_``). Exactly one selector.

    A renewal repeats the stored request (new key, new serial), resolves the certificate's expiry
    alert and is audited as ``creds.certs.renew``; a failure is audited with outcome "failed" and
    the batch goes on. Imported and revoked certificates are skipped by ``due``/``all_``.
    In: ``renew_before_days`` (settings.creds.renew_before_days) and ``now`` (tests) decide "due".
    Out: one RenewResult per certificate considered.
    Raises: UsageError (no or several selectors; ``name`` is an imported certificate),
        NotFoundError.
    """
    if sum((bool(name), due, all_)) != 1:
        raise UsageError("say which certificates to renew: NAME, --due or --all (exactly one)")
    now = now or utcnow()
    if name:
        cert = get(session, name)
        if cert.provider == "imported":
            raise UsageError(f"certificate {name!r} was imported: renew it where it was issued "
                             "and import the new one")
        return [_renew_one(session, keyring, cert)]
    results = []
    for cert in list_certificates(session):
        if cert.provider == "imported":
            results.append(RenewResult(cert.name, "skipped", "imported", cert.serial, cert.serial,
                                       _aware(cert.not_after)))
        elif cert.status == "revoked":
            results.append(RenewResult(cert.name, "skipped", "revoked", cert.serial, cert.serial,
                                       _aware(cert.not_after)))
        elif due and not is_due(cert, now, renew_before_days):
            results.append(RenewResult(cert.name, "not_due", f"{days_left(cert, now):.1f} days left",
                                       cert.serial, cert.serial, _aware(cert.not_after)))
        else:
            results.append(_renew_one(session, keyring, cert))
            # Keep each renewal as soon as it is made: the CA has already issued it, and a later
            # failure must not roll back its key.
            session.commit()
    return results


def revoke(session: Session, keyring: Keyring, *, name: str, reason: str = "unspecified") -> Certificate:
    """Revoke a certificate at the CA that issued it (request signed with its own key).

    Out: the Certificate, now status "revoked"; its expiry alert resolved; audited as
        ``creds.certs.revoke``.
    Raises: NotFoundError, StateError (already revoked), UsageError (imported: unityctl does not
        know its CA), ProviderError (the CA refused).
    """
    from unityctl.core.alerts import clear_alert
    from unityctl.creds import acme

    cert = get(session, name)
    if cert.status == "revoked":
        raise StateError(f"certificate {name!r} is already revoked")
    if cert.provider == "imported":
        raise UsageError(f"certificate {name!r} was imported: revoke it with the CA that issued it")
    key_pem = private_key(session, keyring, cert)
    with _acme_request(session, json.loads(cert.domains), json.loads(cert.request)) as req:
        release_locks(session)
        acme.revoke(req.server, cert.cert_pem + cert.chain_pem, key_pem, req.ca_bundle, reason=reason)
    cert.status = "revoked"
    session.add(cert)
    clear_alert(session, dedup_key=expiry_dedup_key(cert.id))  # type: ignore[arg-type]
    audit.record(session, keyring, action="creds.certs.revoke", object_type="certificate",
                 object_id=name, details={"serial": cert.serial, "reason": reason})
    return cert


# --- deploy -------------------------------------------------------------------------------------


@dataclass
class DeployResult:
    """One server's outcome in ``deploy``: deployed | reload_failed | failed."""

    server: str
    status: str
    cert_path: str
    key_path: str
    reloaded: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def deploy(session: Session, keyring: Keyring, *, name: str, servers: Sequence[str], cert_path: str,
           key_path: str, reload_command: str | None = None, settings: Settings | None = None,
           ) -> list[DeployResult]:
    """Install a certificate on servers over SSH, then run the reload command.

    Per server: the key is written to ``key_path`` (0600), then the full chain (leaf + chain) to
    ``cert_path`` (0644), each atomically (temporary file + rename in the same directory, see
    SSHExecutor.write_file); the directories must exist. Then ``reload_command`` runs. A failed
    reload leaves the files in place, marks the deployment "reload_failed" and raises a
    ``certificate_reload_failed`` alert; a later successful deploy resolves it. A server that
    cannot be reached or written is "failed" and the batch goes on.
    In: certificate name, ServerCredential names, the two paths, the reload command, settings
        (SSH timeouts, alert policy; defaults when None).
    Out: one DeployResult per server, in the order given; audited as ``creds.certs.deploy``
        (outcome ok, partial or failed, with the per-server results).
    Raises: NotFoundError (certificate or server), StateError (revoked certificate), UsageError.
    """
    from unityctl.core.alerts import clear_alert, raise_alert
    from unityctl.creds import servers as servers_mod

    cert = get(session, name)
    if cert.status == "revoked":
        raise StateError(f"certificate {name!r} is revoked: issue a new one before deploying")
    if not servers:
        raise UsageError("give at least one --to SERVER")
    if not cert_path.strip() or not key_path.strip() or cert_path == key_path:
        raise UsageError("--cert-path and --key-path must be two different paths")
    key_pem = private_key(session, keyring, cert)
    fullchain = cert.cert_pem + cert.chain_pem
    # Resolve every server first: an unknown name is a usage mistake, not a per-server failure.
    rows = [servers_mod.get_server(session, server) for server in dict.fromkeys(servers)]
    ssh_config = settings.ssh if settings is not None else None
    alerts_config = settings.alerts if settings is not None else None
    targets = [(row, servers_mod.target_for(session, keyring, row, ssh=ssh_config)) for row in rows]
    results: list[DeployResult] = []
    with servers_mod.ssh_executor(session, keyring) as executor:
        for row, target in targets:
            server = row.name
            result = DeployResult(server=server, status="deployed", cert_path=cert_path, key_path=key_path)
            dep = session.exec(select(CertificateDeployment).where(
                CertificateDeployment.certificate_id == cert.id,
                CertificateDeployment.server_id == row.id,
                CertificateDeployment.cert_path == cert_path)).first()
            if dep is None:
                dep = CertificateDeployment(certificate_id=cert.id, server_id=row.id,  # type: ignore[arg-type]
                                            cert_path=cert_path, key_path=key_path)
            dep.key_path, dep.reload_command = key_path, reload_command
            try:
                executor.write_file(target, key_path, key_pem, 0o600)
                executor.write_file(target, cert_path, fullchain, 0o644)
            except UnityctlError as exc:
                result.status, result.error = "failed", str(exc)
                dep.status, dep.last_error = "failed", str(exc)
                session.add(dep)
                if not isinstance(exc, RemoteCommandError):  # could not log in at all
                    servers_mod.record_login(session, row, str(exc))
                results.append(result)
                continue
            servers_mod.record_login(session, row)
            dep.fingerprint, dep.deployed_at, dep.status, dep.last_error = cert.fingerprint, utcnow(), "deployed", None
            session.add(dep)
            session.flush()
            if reload_command:
                try:
                    run = executor.run(target, reload_command, check=False)
                    error = None if run.ok else (f"reload command exited with status {run.exit_code}"
                                                 + (f": {run.stderr.strip().splitlines()[0]}"
                                                    if run.stderr.strip() else ""))
                except UnityctlError as exc:
                    error = f"reload command failed: {exc}"
                if error is None:
                    result.reloaded = True
                else:
                    result.status, result.error = "reload_failed", error
                    dep.status, dep.last_error = "reload_failed", error
                    session.add(dep)
                    raise_alert(session, type=RELOAD_ALERT, severity="warning",
                                source_type="certificate_deployment", source_id=dep.id,  # type: ignore[arg-type]
                                dedup_key=reload_dedup_key(dep.id),  # type: ignore[arg-type]
                                message=f"certificate {name} was written to {server}:{cert_path} but "
                                        f"`{reload_command}` failed: the old certificate is still served",
                                details={"certificate": name, "server": server, "error": error},
                                config=alerts_config)
            if result.status == "deployed":
                clear_alert(session, dedup_key=reload_dedup_key(dep.id))  # type: ignore[arg-type]
            results.append(result)
    failed = [r for r in results if r.status != "deployed"]
    outcome = "ok" if not failed else ("failed" if len(failed) == len(results) else "partial")
    audit.record(session, keyring, action="creds.certs.deploy", object_type="certificate",
                 object_id=name, outcome=outcome,
                 details={"serial": cert.serial, "cert_path": cert_path, "key_path": key_path,
                          "reload": reload_command,
                          "servers": {r.server: r.status + (f": {r.error}" if r.error else "")
                                      for r in results}})
    return results


# --- check --------------------------------------------------------------------------------------


@dataclass
class CheckItem:
    """One certificate in ``check``: status ok | expiring | expired | stale | unreachable."""

    name: str
    status: str
    days_left: float
    not_after: dt.datetime
    detail: str = ""
    endpoint: str | None = None
    stored_fingerprint: str = ""
    served_fingerprint: str | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def attention(self) -> bool:
        return self.status != "ok"

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["attention"] = self.attention
        return doc


def _sni_for(cert: Certificate, host: str) -> str:
    for domain in json.loads(cert.domains):
        if not domain.startswith("*."):
            return str(domain)
    return host


def check(session: Session, *, days: float, now: dt.datetime | None = None,
          fetch: Callable[..., str] | None = None, timeout: float = 10.0) -> list[CheckItem]:
    """Check every certificate that is not revoked: does it expire within ``days``, and does its
    endpoint (when one is set) serve exactly the stored certificate?

    The endpoint is read with a real TLS handshake (SNI = the certificate's first name) and its
    leaf's SHA-256 compared with the stored one: a difference is "stale: serving X, stored Y",
    the classic "renewed but never reloaded". An endpoint that cannot be reached is
    "unreachable". Read-only: nothing is written.
    Out: one CheckItem per certificate (``attention`` True for anything but "ok").
    """
    from unityctl.creds.x509info import fetch_served_certificate, parse_certificate

    fetch = fetch or fetch_served_certificate
    now = now or utcnow()
    items: list[CheckItem] = []
    for cert in list_certificates(session):
        if cert.status == "revoked":
            continue
        left = days_left(cert, now)
        item = CheckItem(name=cert.name, status="ok", days_left=round(left, 2),
                         not_after=_aware(cert.not_after), endpoint=cert.endpoint,
                         stored_fingerprint=cert.fingerprint)
        statuses = []
        if left <= 0:
            statuses.append("expired")
            item.problems.append(f"expired {-left:.1f} days ago")
        elif left <= days:
            statuses.append("expiring")
            item.problems.append(f"expires in {left:.1f} days")
        if cert.endpoint:
            host, port = parse_endpoint(cert.endpoint)
            try:
                served = parse_certificate(fetch(host, port, server_name=_sni_for(cert, host), timeout=timeout))
                item.served_fingerprint = served.fingerprint_sha256
                if served.fingerprint_sha256 != cert.fingerprint:
                    statuses.insert(0, "stale")
                    item.problems.insert(0, f"stale: serving {served.fingerprint_sha256}, "
                                            f"stored {cert.fingerprint}")
            except UnityctlError as exc:
                statuses.append("unreachable")
                item.problems.append(str(exc))
        if statuses:
            # The most serious first: expired > stale > expiring > unreachable.
            order = ("expired", "stale", "expiring", "unreachable")
            item.status = min(statuses, key=order.index)
        item.detail = "; ".join(item.problems) or f"{left:.1f} days left"
        if cert.endpoint and not item.problems:
            item.detail += f"; {cert.endpoint} serves it"
        items.append(item)
    return items

