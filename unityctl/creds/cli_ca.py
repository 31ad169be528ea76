"""`unityctl creds ca`: the SSH certificate authority."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from unityctl.core.cli.common import JsonOpt, app_ctx

app = typer.Typer(help="SSH certificate authority: init, sign-user, sign-host, revoke, install.", no_args_is_help=True)

CaOpt = Annotated[str | None, typer.Option("--ca", help="Which CA (needed only when there are several).")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Also write the certificate to this file.")]


def _write_cert(path: Path | None, line: str) -> None:
    if path is not None:
        path.write_text(line.strip() + "\n")


def _cert_doc(cert: Any) -> dict[str, Any]:
    from unityctl.creds import ca

    return ca.cert_to_dict(cert)


@app.command()
def init(ctx: typer.Context, name: Annotated[str, typer.Argument(help="CA name.")] = "default",
         json_: JsonOpt = False) -> None:
    """Create an SSH CA (ed25519; the private key is stored encrypted)."""
    from unityctl.creds import ca

    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session(write=True) as session:
        doc = ca.ca_to_dict(session, ca.init_ca(session, keyring, name=name))
    out.emit(doc, lambda c: c.print(doc["public_key"], markup=False))


@app.command("list")
def list_(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """List CAs."""
    from unityctl.creds import ca

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        docs = [ca.ca_to_dict(session, c) for c in ca.list_cas(session)]
    out.emit(docs, lambda c: out.table(["name", "fingerprint", "certificates", "revoked", "krl version"],
                                       [(d["name"], d["fingerprint"], d["certificates"], d["revoked"],
                                         d["krl_version"]) for d in docs], empty="no SSH CA: `creds ca init`"))


@app.command()
def show(ctx: typer.Context, name: Annotated[str | None, typer.Argument()] = None, json_: JsonOpt = False) -> None:
    """Show a CA: its public key and every certificate it issued."""
    from unityctl.creds import ca

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        doc = ca.ca_to_dict(session, ca.get_ca(session, name), detail=True)

    def render(c: Any) -> None:
        c.print(f"{doc['name']}: {doc['fingerprint']}\n{doc['public_key']}", markup=False)
        out.table(["serial", "type", "identity", "principals", "valid until", "state"],
                  [(d["serial"], d["type"], d["identity"], ",".join(d["principals"]),
                    f"{d['valid_before']:%Y-%m-%d %H:%M}", d["state"]) for d in doc["issued"]],
                  empty="no certificates issued yet")

    out.emit(doc, render)


@app.command("sign-user")
def sign_user(
    ctx: typer.Context,
    key: str,
    principal: Annotated[list[str], typer.Option("--principal", help="Login name allowed (repeatable).")],
    valid: Annotated[str, typer.Option(help="Lifetime, e.g. 8h, 30m, 7d.")] = "8h",
    source_address: Annotated[list[str] | None, typer.Option(help="Only from this CIDR (repeatable).")] = None,
    force_command: Annotated[str | None, typer.Option(help="Run only this command.")] = None,
    ca_name: CaOpt = None,
    out_file: OutOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Sign a stored key's public half: prints the certificate line (KEY-cert.pub)."""
    from unityctl.creds import ca

    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session(write=True) as session:
        doc = _cert_doc(ca.sign_user(session, keyring, key_name=key, principals=principal, valid=valid,
                                     source_address=source_address, force_command=force_command, ca_name=ca_name))
    _write_cert(out_file, doc["certificate"])
    out.emit(doc, lambda c: typer.echo(doc["certificate"]))
    out.note(f"serial {doc['serial']}, valid until {doc['valid_before']:%Y-%m-%d %H:%M} UTC")


@app.command("sign-host")
def sign_host(
    ctx: typer.Context,
    server: str,
    principal: Annotated[list[str] | None, typer.Option("--principal", help="Host name (repeatable; default: "
                                                        "the server's host and name).")] = None,
    valid: Annotated[str, typer.Option(help="Lifetime.")] = "52w",
    ca_name: CaOpt = None,
    out_file: OutOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Sign a server's (pinned) host key: prints the host certificate line."""
    from unityctl.creds import ca

    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session(write=True) as session:
        doc = _cert_doc(ca.sign_host(session, keyring, server_name=server, principals=principal, valid=valid,
                                     ca_name=ca_name, ssh=a.settings.ssh))
    _write_cert(out_file, doc["certificate"])
    out.emit(doc, lambda c: typer.echo(doc["certificate"]))


@app.command()
def revoke(ctx: typer.Context, what: Annotated[str, typer.Argument(help="A serial, or a key name (all its "
                                                                        "certificates).")],
           ca_name: CaOpt = None) -> None:
    """Revoke certificates (KRL); push the new KRL with `creds ca install SERVER`."""
    from unityctl.creds import ca

    a = app_ctx(ctx)
    keyring = a.keyring()
    with a.session(write=True) as session:
        serials = ca.revoke(session, keyring, what=what, ca_name=ca_name)
    a.output().success(f"revoked serial(s) {', '.join(map(str, serials)) or '(already revoked)'}; "
                       "run `creds ca install SERVER` to update servers")


@app.command()
def install(
    ctx: typer.Context,
    server: str,
    directory: Annotated[str, typer.Option("--dir", help="Where on the server (relative to the login's home "
                                           "unless absolute).")] = ".ssh/unityctl-ca",
    sshd_config: Annotated[str | None, typer.Option(help="Also write TrustedUserCAKeys/RevokedKeys to this sshd "
                                                    "config snippet, e.g. /etc/ssh/sshd_config.d/unityctl-ca.conf.")] = None,
    reload: Annotated[str | None, typer.Option(help="Then run this, e.g. 'systemctl reload ssh'.")] = None,
    ca_name: CaOpt = None,
    json_: JsonOpt = False,
) -> None:
    """Install the CA key (TrustedUserCAKeys) and the KRL (RevokedKeys) on a server over SSH."""
    from unityctl.core.errors import PartialFailure
    from unityctl.creds import ca

    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session(write=True) as session:
        doc = ca.install(session, keyring, server_name=server, ca_name=ca_name, directory=directory,
                         sshd_config=sshd_config, reload=reload, ssh=a.settings.ssh)

    def render(c: Any) -> None:
        c.print(f"installed on {server}:", markup=False)
        for line in doc["directives"]:
            c.print(f"  {line}", markup=False)
        if not sshd_config:
            c.print("add these lines to the server's sshd_config and reload sshd", markup=False)

    out.emit(doc, render)
    if doc["reload_error"]:
        raise PartialFailure(f"files installed on {server}, but the reload failed: {doc['reload_error']}")
