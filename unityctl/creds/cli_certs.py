"""`unityctl creds certs ...`, `creds step-ca ...` and `creds metrics`: thin commands over
unityctl.creds.certificates / stepca / expiry / metrics.

``creds/cli.py`` mounts :data:`certs_app` as ``certs``, :data:`stepca_app` as ``step-ca`` and
registers :func:`metrics` as ``metrics``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from unityctl.core.cli.common import JsonOpt, app_ctx
from unityctl.core.errors import UsageError

certs_app = typer.Typer(help="TLS certificates: ACME (Let's Encrypt, step-ca), import, renew, deploy, check.",
                        no_args_is_help=True)
stepca_app = typer.Typer(help="step-ca: the private CA whose ACME endpoint `certs issue --provider step-ca` uses.",
                         no_args_is_help=True)


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read {what} {path}: {getattr(exc, 'strerror', None) or exc}") from None


def _render_certs(out: Any, docs: list[dict[str, Any]]) -> None:
    out.table(["name", "domains", "issuer", "not after", "days left", "provider", "status"],
              [(d["name"], ", ".join(d["domains"]), d["issuer"], d["not_after"].strftime("%Y-%m-%d %H:%M"),
                f"{d['days_left']:.1f}", d["provider"],
                d["status"] + (" (renewal due)" if d["renewal_due"] and d["status"] == "valid" else ""))
               for d in docs], empty="no certificates: `creds certs issue` or `creds certs import`")


def _brief(doc: dict[str, Any]) -> str:
    return (f"{doc['name']}: {', '.join(doc['domains'])}, serial {doc['serial']}, "
            f"valid until {doc['not_after']:%Y-%m-%d %H:%M} UTC")


@certs_app.command("issue")
def issue(
    ctx: typer.Context,
    domains: Annotated[list[str], typer.Argument(help="Names on the certificate (the first is the default name).")],
    name: Annotated[str | None, typer.Option(help="Name in unityctl (default: the first domain).")] = None,
    acme_server: Annotated[str, typer.Option(help="ACME directory URL, or letsencrypt / letsencrypt-staging.")]
    = "letsencrypt",
    provider: Annotated[str, typer.Option(help="acme, or step-ca (uses `creds step-ca set`).")] = "acme",
    challenge: Annotated[str, typer.Option(help="ACME challenge (http-01).")] = "http-01",
    standalone: Annotated[bool, typer.Option(help="certbot answers http-01 itself on --http-port (default).")]
    = False,
    webroot: Annotated[Path | None, typer.Option(help="Write the http-01 token under DIR for a running "
                                                 "web server instead.")] = None,
    http_port: Annotated[int, typer.Option(help="Port of the standalone http-01 server.")] = 80,
    http_address: Annotated[str, typer.Option(help="Address of the standalone server (default: all).")] = "",
    key_type: Annotated[str, typer.Option(help="ecdsa (P-256) or rsa (2048).")] = "ecdsa",
    ca_bundle: Annotated[Path | None, typer.Option(help="PEM trusted for the ACME server's HTTPS (private CA); "
                                                   "stored for renewals.")] = None,
    email: Annotated[str | None, typer.Option(help="Account e-mail for the CA's notices.")] = None,
    endpoint: Annotated[str | None, typer.Option(help="HOST:PORT serving it, checked by `certs check`.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Obtain a certificate through ACME (certbot) and store it; the key is encrypted."""
    from unityctl.creds import certificates

    if standalone and webroot:
        raise UsageError("give either --standalone or --webroot, not both")
    a = app_ctx(ctx)
    out = a.output(json_)
    bundle = _read(ca_bundle, "CA bundle") if ca_bundle else None
    keyring = a.keyring()
    with a.session(write=True) as session:
        cert = certificates.issue(
            session, keyring, domains=domains, name=name, provider=provider, server=acme_server,
            challenge=challenge, mode="webroot" if webroot else "standalone", http_port=http_port,
            http_address=http_address, webroot=str(webroot) if webroot else None, key_type=key_type,
            email=email, ca_bundle_pem=bundle, endpoint=endpoint)
        doc = certificates.to_dict(cert, renew_before_days=a.settings.creds.renew_before_days)
    out.emit(doc, lambda c: out.success(f"issued {_brief(doc)}"))


@certs_app.command("import")
def import_(
    ctx: typer.Context,
    cert: Annotated[Path, typer.Argument(help="Certificate PEM (a full chain is fine).")],
    key: Annotated[Path, typer.Argument(help="Its private key PEM (unencrypted).")],
    chain: Annotated[Path | None, typer.Option(help="Chain PEM (intermediates).")] = None,
    name: Annotated[str | None, typer.Option(help="Name in unityctl (default: the first domain).")] = None,
    endpoint: Annotated[str | None, typer.Option(help="HOST:PORT serving it, checked by `certs check`.")] = None,
    json_: JsonOpt = False,
) -> None:
    """Import a certificate and its key (the key must match; it is stored encrypted)."""
    from unityctl.creds import certificates

    a = app_ctx(ctx)
    out = a.output(json_)
    cert_pem, key_pem = _read(cert, "certificate"), _read(key, "private key")
    chain_pem = _read(chain, "chain") if chain else ""
    keyring = a.keyring()
    with a.session(write=True) as session:
        row = certificates.import_certificate(session, keyring, cert_pem=cert_pem, key_pem=key_pem,
                                              chain_pem=chain_pem, name=name, endpoint=endpoint)
        doc = certificates.to_dict(row, renew_before_days=a.settings.creds.renew_before_days)
    out.emit(doc, lambda c: out.success(f"imported {_brief(doc)}"))


@certs_app.command("list")
def list_(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """List certificates: domains, issuer, not-after, days left, provider, status."""
    from unityctl.creds import certificates

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        docs = [certificates.to_dict(c, renew_before_days=a.settings.creds.renew_before_days)
                for c in certificates.list_certificates(session)]
    out.emit(docs, lambda c: _render_certs(out, docs))


@certs_app.command("show")
def show(ctx: typer.Context, name: str, json_: JsonOpt = False) -> None:
    """Show one certificate, its request and deployments (never its private key)."""
    from unityctl.creds import certificates

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        doc = certificates.show(session, name, renew_before_days=a.settings.creds.renew_before_days)

    def render(console: Any) -> None:
        brief = {k: v for k, v in doc.items() if k not in ("certificate_pem", "chain_pem", "deployments")}
        brief["deployments"] = [f"{d['server']}:{d['cert_path']} ({d['status']}"
                                + ("" if d["current"] else ", older certificate") + ")"
                                for d in doc["deployments"]]
        out.emit(brief)

    out.emit(doc, render)


@certs_app.command("renew")
def renew(
    ctx: typer.Context,
    name: Annotated[str | None, typer.Argument(help="Renew this certificate now, due or not.")] = None,
    due: Annotated[bool, typer.Option("--due", help="Renew every certificate that is due.")] = False,
    all_: Annotated[bool, typer.Option("--all", help="Renew every renewable certificate.")] = False,
    days: Annotated[float | None, typer.Option(help="Renewal window in days for --due (default: "
                                               "creds.renew_before_days; capped at a third of the lifetime).")]
    = None,
    json_: JsonOpt = False,
) -> None:
    """Renew certificates (a new order with the stored request: new key, new serial).

    Exit 3 when some renewals failed (the others are kept).
    """
    from unityctl.core.errors import PartialFailure
    from unityctl.creds import certificates

    a = app_ctx(ctx)
    out = a.output(json_)
    window = days if days is not None else a.settings.creds.renew_before_days
    keyring = a.keyring()
    with a.session(write=True) as session:
        results = certificates.renew(session, keyring, name=name, due=due, all_=all_, renew_before_days=window)
    docs = [r.to_dict() for r in results]
    out.emit(docs, lambda c: out.table(
        ["certificate", "outcome", "serial", "not after", "detail"],
        [(r.name, r.outcome, r.serial, r.not_after.strftime("%Y-%m-%d %H:%M") if r.not_after else "", r.detail)
         for r in results], empty="no certificates"))
    failed = [r for r in results if r.outcome == "failed"]
    if failed:
        renewed = sum(r.outcome == "renewed" for r in results)
        raise PartialFailure(f"{len(failed)} of {len(failed) + renewed} renewal(s) failed: "
                             + ", ".join(f"{r.name} ({r.detail})" for r in failed))


@certs_app.command("revoke")
def revoke(
    ctx: typer.Context,
    name: str,
    reason: Annotated[str, typer.Option(help="unspecified, keycompromise, superseded, "
                                        "affiliationchanged, cessationofoperation.")] = "unspecified",
) -> None:
    """Revoke a certificate at the CA that issued it."""
    from unityctl.creds import certificates

    a = app_ctx(ctx)
    keyring = a.keyring()
    with a.session(write=True) as session:
        cert = certificates.revoke(session, keyring, name=name, reason=reason)
        serial = cert.serial
    a.output().success(f"certificate {name} (serial {serial}) revoked")


@certs_app.command("deploy")
def deploy(
    ctx: typer.Context,
    name: str,
    to: Annotated[list[str], typer.Option("--to", help="Server (creds servers) to install on; repeatable.")],
    cert_path: Annotated[str, typer.Option(help="Remote path of the certificate (full chain, 0644).")],
    key_path: Annotated[str, typer.Option(help="Remote path of the private key (0600).")],
    reload: Annotated[str | None, typer.Option(help="Command run afterwards, e.g. 'systemctl reload nginx'.")]
    = None,
    json_: JsonOpt = False,
) -> None:
    """Install a certificate and its key over SSH (atomically), then reload the service.

    A failed reload is reported, recorded and raises a certificate_reload_failed alert. Exit 1
    when every server failed, 3 when some did.
    """
    from unityctl.core.errors import PartialFailure, UnityctlError
    from unityctl.creds import certificates

    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session(write=True) as session:
        results = certificates.deploy(session, keyring, name=name, servers=to, cert_path=cert_path,
                                      key_path=key_path, reload_command=reload, settings=a.settings)
    out.emit([r.to_dict() for r in results], lambda c: out.table(
        ["server", "status", "reloaded", "error"],
        [(r.server, r.status, "yes" if r.reloaded else ("-" if not reload else "no"), r.error or "")
         for r in results]))
    failed = [r for r in results if r.status != "deployed"]
    if not failed:
        return
    summary = "; ".join(f"{r.server}: {r.error}" for r in failed)
    if len(failed) == len(results):
        raise UnityctlError(f"deploy of {name} failed: {summary}")
    raise PartialFailure(f"deploy of {name} failed on {len(failed)} of {len(results)} servers: {summary}")


@certs_app.command("check")
def check(
    ctx: typer.Context,
    days: Annotated[float | None, typer.Option(help="Attention when a certificate expires within N days "
                                               "(default: creds.renew_before_days).")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds for each endpoint's TLS handshake.")] = 10.0,
    json_: JsonOpt = False,
) -> None:
    """Check expiry, and that each certificate's endpoint serves the stored certificate.

    Exit 4 when a certificate expires within N days, has expired, or its endpoint serves another
    certificate ("stale": renewed but never reloaded) or cannot be reached.
    """
    from unityctl.core.errors import EXIT_ATTENTION
    from unityctl.creds import certificates

    a = app_ctx(ctx)
    out = a.output(json_)
    window = days if days is not None else a.settings.creds.renew_before_days
    with a.session() as session:
        items = certificates.check(session, days=window, timeout=timeout)
    out.emit([i.to_dict() for i in items], lambda c: out.table(
        ["certificate", "status", "days left", "endpoint", "detail"],
        [(i.name, i.status, f"{i.days_left:.1f}", i.endpoint or "", i.detail) for i in items],
        empty="no certificates"))
    if any(i.attention for i in items):
        raise typer.Exit(EXIT_ATTENTION)


@certs_app.command("expiry")
def expiry(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Raise/escalate/resolve certificate expiry alerts now (the daemon runs this on a timer)."""
    from unityctl.creds import expiry as expiry_task

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session(write=True) as session:
        summary = expiry_task.run(session, settings=a.settings)
    doc = summary.to_dict()
    out.emit(doc, lambda c: out.note(
        f"checked {summary.checked} certificate(s): {summary.alerting} alerting "
        f"({summary.raised} new, {summary.escalated} escalated), {summary.resolved} resolved"))


@stepca_app.command("set")
def stepca_set(
    ctx: typer.Context,
    url: Annotated[str, typer.Option(help="step-ca URL, https://HOST[:PORT] (or a full ACME directory URL).")],
    root_fingerprint: Annotated[str, typer.Option(help="SHA-256 of the root certificate "
                                                  "(`step certificate fingerprint root_ca.crt`).")],
    provisioner: Annotated[str, typer.Option(help="Name of the ACME provisioner.")] = "acme",
    root_file: Annotated[Path | None, typer.Option(help="Root certificate PEM (default: download it from "
                                                   "the CA and check the fingerprint).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Configure step-ca; its root is trusted only if it has the pinned fingerprint."""
    from unityctl.creds import stepca

    a = app_ctx(ctx)
    out = a.output(json_)
    root_pem = _read(root_file, "root certificate") if root_file else None
    keyring = a.keyring()
    with a.session(write=True) as session:
        config = stepca.set_config(session, keyring, url=url, root_fingerprint=root_fingerprint,
                                   provisioner=provisioner, root_pem=root_pem)
        doc = stepca.to_dict(config)
    out.emit(doc, lambda c: out.success(f"step-ca {doc['url']} (ACME directory {doc['directory_url']}), "
                                        f"root {doc['root_fingerprint']} pinned"))


@stepca_app.command("show")
def stepca_show(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """Show the step-ca configuration."""
    from unityctl.creds import stepca

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        doc = stepca.to_dict(stepca.get_config(session))
    out.emit(doc)


def metrics(
    ctx: typer.Context,
    json_: JsonOpt = False,
    format_: Annotated[str, typer.Option("--format", help="table or prometheus.")] = "table",
) -> None:
    """Keys by type, certificates by days left, deployments, unused keys."""
    from unityctl.creds import metrics as metrics_svc

    if format_ not in ("table", "prometheus"):
        raise UsageError(f"--format {format_!r}: use table or prometheus")
    if json_ and format_ == "prometheus":
        raise UsageError("give either --json or --format prometheus")
    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        doc = metrics_svc.collect(session, settings=a.settings)
    if format_ == "prometheus":
        import sys

        sys.stdout.write(metrics_svc.to_prometheus(doc))
        return

    def render(console: Any) -> None:
        rows = [("ssh keys", "total", doc["ssh_keys_total"])]
        rows += [("ssh keys", f"type {t}", n) for t, n in doc["ssh_keys_by_type"].items()]
        rows += [("ssh keys", "weak", doc["weak_keys"]),
                 ("ssh keys", f"unused ({doc['unused_key_days']}+ days or never)", doc["unused_keys"]),
                 ("certificates", "total", doc["certificates_total"])]
        rows += [("certificates", f"days left {b}", n) for b, n in doc["certificates_by_days_left"].items()]
        rows += [("key deployments", s, n) for s, n in doc["key_deployments"].items()]
        rows += [("certificate deployments", s, n) for s, n in doc["certificate_deployments"].items()]
        out.table(["metric", "group", "value"], rows)

    out.emit(doc, render)
