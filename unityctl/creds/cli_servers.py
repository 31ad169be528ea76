"""`unityctl creds servers`: how unityctl logs in to servers, and their pinned host keys."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from unityctl.core.cli.common import JsonOpt, app_ctx, read_secret_stdin

app = typer.Typer(help="Server logins: host, user, key or password, jump host; pinned host keys.",
                  no_args_is_help=True)


@app.command()
def add(
    ctx: typer.Context,
    name: str,
    host: Annotated[str, typer.Option(help="Host name or address.")],
    user: Annotated[str, typer.Option(help="Login user.")],
    port: Annotated[int, typer.Option(help="SSH port.")] = 22,
    key: Annotated[str | None, typer.Option(help="Log in with this stored key.")] = None,
    password_stdin: Annotated[bool, typer.Option(help="Log in with a password read from stdin.")] = False,
    jump: Annotated[str | None, typer.Option(help="Reach it through this server (ProxyJump).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Register a server login (the host key is pinned at the first connection)."""
    from unityctl.core.errors import UsageError
    from unityctl.creds import servers

    if (key is None) == (not password_stdin):
        raise UsageError("give exactly one of --key KEY or --password-stdin")
    password = read_secret_stdin("password") if password_stdin else None
    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session(write=True) as session:
        server = servers.add_server(session, keyring, name=name, host=host, port=port, user=user, key_name=key,
                                    password=password, jump_name=jump)
        doc = servers.server_to_dict(session, server)
    out.emit(doc, lambda c: out.success(f"server {name}: {user}@{host}:{port} ({doc['auth']}"
                                        + (f" {key}" if key else "") + (f", via {jump}" if jump else "") + ")"))


@app.command("list")
def list_(ctx: typer.Context, json_: JsonOpt = False) -> None:
    """List server logins and their pinned host keys."""
    from unityctl.core.output import ago
    from unityctl.creds import servers

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        docs = [servers.server_to_dict(session, s) for s in servers.list_servers(session)]
    out.emit(docs, lambda c: out.table(
        ["name", "address", "user", "auth", "jump", "host key", "last login", "last error"],
        [(d["name"], f"{d['host']}:{d['port']}", d["user"], d["key"] or d["auth"], d["jump"] or "",
          d["host_key_fingerprint"] or "(not pinned)", ago(d["last_login_at"]), d["last_error"] or "")
         for d in docs], empty="no servers: add one with `creds servers add`"))


@app.command()
def show(ctx: typer.Context, name: str, json_: JsonOpt = False) -> None:
    """Show one server login, its host key and the keys deployed there."""
    from unityctl.creds import servers

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        doc = servers.server_to_dict(session, servers.get_server(session, name), detail=True)

    def render(c: Any) -> None:
        for k in ("name", "host", "port", "user", "auth", "key", "jump", "host_key_fingerprint",
                  "host_key_pinned_at", "last_login_at", "last_error"):
            c.print(f"{k + ':':22}{'-' if doc[k] is None else doc[k]}", markup=False)
        out.table(["key", "fingerprint", "status"], [(d["key"], d["fingerprint"], d["status"])
                                                     for d in doc["deployed_keys"]], empty="no keys deployed here")

    out.emit(doc, render)


@app.command()
def remove(
    ctx: typer.Context,
    name: str,
    force: Annotated[bool, typer.Option(help="Remove even if keys are deployed there (their lines stay).")] = False,
) -> None:
    """Forget a server login and its stored password."""
    from unityctl.creds import servers

    a = app_ctx(ctx)
    keyring = a.keyring()
    with a.session(write=True) as session:
        servers.remove_server(session, keyring, name=name, force=force)
    a.output().success(f"server {name} removed")


@app.command()
def test(ctx: typer.Context, name: str, json_: JsonOpt = False) -> None:
    """Log in for real: remote user, host key fingerprint, latency (pins the host key on first use)."""
    from unityctl.core.errors import SSHError
    from unityctl.creds import servers

    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session(write=True) as session:
        doc = servers.login_test(session, keyring, name=name, ssh=a.settings.ssh)
    if not doc["ok"]:
        if json_:
            out.emit(doc)
        raise SSHError(doc["error"])
    out.emit(doc, lambda c: c.print(f"{name}: logged in as {doc['remote_user']}; host key "
                                    f"{doc['host_key_fingerprint']}; connect {doc['connect_ms']:.0f} ms, "
                                    f"round trip {doc['latency_ms']:.1f} ms", markup=False))


@app.command()
def trust(
    ctx: typer.Context,
    name: str,
    fingerprint: Annotated[str | None, typer.Option(help="Only accept this SHA256:... fingerprint (check it "
                                                    "out of band, e.g. ssh-keygen -lf on the console).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Accept the host key a server presents now (after a legitimate change)."""
    from unityctl.creds import servers

    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session(write=True) as session:
        doc = servers.trust_server(session, keyring, name=name, fingerprint=fingerprint, ssh=a.settings.ssh)
    if doc["login_error"]:
        out.warn(f"host key accepted, but the login failed: {doc['login_error']}")
    out.emit(doc, lambda c: out.success(
        f"{name}: now trusting {doc['new_fingerprint']}" + (f" (was {doc['old_fingerprint']})"
                                                             if doc["changed"] and doc["old_fingerprint"] else "")))
