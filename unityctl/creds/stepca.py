"""step-ca as a certificate provider: its configuration (URL, provisioner, pinned root) and the
ACME directory + CA bundle that ``certs issue --provider step-ca`` uses.

step-ca speaks RFC 8555 ACME on ``https://CA/acme/PROVISIONER/directory``, so issuance goes
through the same certbot adapter (:mod:`unityctl.creds.acme`) as Let's Encrypt. What step-ca adds
is a private root: its HTTPS and the certificates it issues chain to a root no system trusts.
Like ``step ca bootstrap``, unityctl trusts that root only when its SHA-256 fingerprint equals the
one the administrator pinned (``step certificate fingerprint root_ca.crt``); the root is stored
(public, in ``StepCAConfig.root_pem``) and handed to certbot as its CA bundle on every issuance
and renewal, so neither the system store nor ``REQUESTS_CA_BUNDLE`` is involved.

``--url`` is normally the CA's base URL (``https://ca.lan:9000``); a URL with a path is taken as
the full ACME directory URL instead (any RFC 8555 CA pinned the same way, and how the tests point
this code path at Pebble, since step-ca itself cannot run in the test environment).
"""

from __future__ import annotations

import json
import re
import ssl
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import urlsplit

from sqlmodel import Session, select

from unityctl.core.crypto import Keyring
from unityctl.core.errors import NotFoundError, ParseError, ProviderError, UsageError
from unityctl.creds.models import StepCAConfig

__all__ = [
    "DEFAULT_NAME",
    "directory_url",
    "fetch_root",
    "get_config",
    "normalize_fingerprint",
    "set_config",
    "to_dict",
]

DEFAULT_NAME = "default"


def normalize_fingerprint(value: str) -> str:
    """Lowercase hex without separators; UsageError unless it is 64 hex digits (SHA-256)."""
    fp = re.sub(r"[\s:]", "", value or "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", fp):
        raise UsageError("a step-ca root fingerprint is the SHA-256 of the root certificate: "
                         "64 hexadecimal digits (`step certificate fingerprint root_ca.crt`)")
    return fp


def _check_url(url: str) -> str:
    url = url.strip()
    parts = urlsplit(url)
    if parts.scheme != "https" or not parts.netloc or any(c.isspace() for c in url):
        raise UsageError(f"step-ca URL {url!r} must be https://HOST[:PORT] "
                         "(or the full https ACME directory URL)")
    return url.rstrip("/") if parts.path in ("", "/") else url


def directory_url(config: StepCAConfig) -> str:
    """The ACME directory of ``config``: ``URL/acme/PROVISIONER/directory``, or ``url`` itself
    when it already has a path (a full directory URL)."""
    from unityctl.creds import acme

    if urlsplit(config.url).path in ("", "/"):
        return acme.step_ca_directory(config.url, config.provisioner)
    return config.url


def fetch_root(url: str, fingerprint: str, *, timeout: float = 10.0) -> str:
    """Download the root certificate from step-ca's ``/root/FINGERPRINT`` endpoint.

    TLS is not verified for this one request (there is nothing to verify it with yet); the
    caller MUST check the returned PEM against the pinned fingerprint, as ``step ca bootstrap``
    does. Raises ProviderError (one line) when the CA cannot be reached or answers nonsense.
    """
    parts = urlsplit(url)
    endpoint = f"{parts.scheme}://{parts.netloc}/root/{fingerprint}"
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        with urllib.request.urlopen(endpoint, context=ctx, timeout=timeout) as resp:  # noqa: S310
            doc = json.loads(resp.read(1_000_000))
    except urllib.error.HTTPError as exc:
        raise ProviderError(f"step-ca at {parts.netloc} has no root with fingerprint "
                            f"{fingerprint} (HTTP {exc.code}); give it with --root-file") from None
    except (OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or str(exc)
        raise ProviderError(f"cannot download the root from step-ca at {parts.netloc}: {reason}") from None
    pem = doc.get("ca") if isinstance(doc, dict) else None
    if not isinstance(pem, str):
        raise ProviderError(f"step-ca at {parts.netloc} answered /root without a 'ca' certificate")
    return pem


def _pinned_root(bundle_pem: str, fingerprint: str) -> str:
    """The one certificate of ``bundle_pem`` whose SHA-256 is ``fingerprint``, as PEM."""
    from unityctl.creds.x509info import parse_certificate, split_chain

    try:
        certs = split_chain(bundle_pem)
    except ParseError as exc:
        raise ParseError(f"step-ca root: {exc}") from None
    for pem in certs:
        if parse_certificate(pem).fingerprint_sha256 == fingerprint:
            return pem
    seen = ", ".join(parse_certificate(pem).fingerprint_sha256 for pem in certs)
    raise ProviderError(f"root fingerprint mismatch: expected {fingerprint}, the root "
                        f"certificate has {seen}; refusing to trust it")


def set_config(session: Session, keyring: Keyring, *, url: str, root_fingerprint: str,
               provisioner: str = "acme", root_pem: str | None = None,
               name: str = DEFAULT_NAME) -> StepCAConfig:
    """Create or replace the step-ca configuration ``name``, pinning its root.

    In: the CA URL, the pinned root fingerprint (hex, colons allowed), the ACME provisioner's
        name, the root PEM (e.g. from ``--root-file``; None downloads it from the CA, unverified
        and then checked against the fingerprint).
    Out: the saved StepCAConfig (audited as ``creds.stepca.set``).
    Raises: UsageError (bad URL/fingerprint/provisioner), ProviderError (fingerprint mismatch,
        CA unreachable), ParseError (not a certificate).
    """
    from unityctl.core import audit
    from unityctl.creds import acme

    url = _check_url(url)
    fingerprint = normalize_fingerprint(root_fingerprint)
    if urlsplit(url).path == "":
        acme.step_ca_directory(url, provisioner)  # validates the provisioner name
    if root_pem is None:
        root_pem = fetch_root(url, fingerprint)
    root = _pinned_root(root_pem, fingerprint)
    config = session.exec(select(StepCAConfig).where(StepCAConfig.name == name)).first()
    created = config is None
    if config is None:
        config = StepCAConfig(name=name, url=url, root_fingerprint=fingerprint, provisioner=provisioner)
    config.url, config.root_fingerprint, config.provisioner, config.root_pem = (
        url, fingerprint, provisioner, root)
    session.add(config)
    session.flush()
    audit.record(session, keyring, action="creds.stepca.set", object_type="step_ca_config",
                 object_id=name, details={"url": url, "provisioner": provisioner,
                                          "root_fingerprint": fingerprint, "created": created})
    return config


def get_config(session: Session, name: str = DEFAULT_NAME) -> StepCAConfig:
    """The step-ca configuration ``name``; NotFoundError telling how to create it."""
    config = session.exec(select(StepCAConfig).where(StepCAConfig.name == name)).first()
    if config is None:
        raise NotFoundError(f"no step-ca configuration {name!r}: create it with "
                            "`unityctl creds step-ca set --url URL --root-fingerprint FP`")
    return config


def to_dict(config: StepCAConfig) -> dict[str, Any]:
    """Plain data for ``step-ca show`` (everything here is public)."""
    from unityctl.creds.x509info import parse_certificate

    doc: dict[str, Any] = {
        "name": config.name,
        "url": config.url,
        "provisioner": config.provisioner,
        "directory_url": directory_url(config),
        "root_fingerprint": config.root_fingerprint,
        "root_subject": None,
        "root_not_after": None,
        "created_at": config.created_at,
    }
    if config.root_pem:
        info = parse_certificate(config.root_pem)
        doc["root_subject"] = info.issuer if info.subject_cn is None else info.subject_cn
        doc["root_not_after"] = info.not_after
    return doc
