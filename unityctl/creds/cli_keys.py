"""`unityctl creds keys`: SSH keys, their distribution and rotation."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from unityctl.core.cli.common import DryRunOpt, JsonOpt, app_ctx, prompt_secret, read_secret_stdin

app = typer.Typer(help="SSH keys: generate, import, deploy, revoke, rotate.", no_args_is_help=True)


def _progress(out: Any, total: int, what: str):  # type: ignore[no-untyped-def]
    """A per-server progress callback on stderr when a person watches; else None."""
    if not out.interactive or total < 2:
        return None, None
    from rich.progress import Progress

    progress = Progress(console=out.err, transient=True)
    task = progress.add_task(what, total=total)
    return progress, (lambda _label, _value: progress.advance(task))


def _key_row(d: dict[str, Any]) -> tuple[Any, ...]:
    from unityctl.core.output import ago

    weak = f"WEAK: {d['weakness']}" if d["weak"] else ""
    return (d["name"], d["type"], d["bits"], d["fingerprint"], d["status"], len(d["deployed_to"]),
            ago(d["last_used_at"]), weak)


@app.command()
def generate(
    ctx: typer.Context,
    name: str,
    type_: Annotated[str | None, typer.Option("--type", help="ed25519 (default), rsa or ecdsa.")] = None,
    bits: Annotated[int | None, typer.Option(help="RSA: 2048-16384 (default 3072); ECDSA: 256, 384, 521.")] = None,
    comment: Annotated[str | None, typer.Option(help="Comment on the public line (default: the name).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Generate a key pair; the private key is stored encrypted."""
    from unityctl.creds import keys

    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session(write=True) as session:
        key = keys.generate_key(session, keyring, name=name, key_type=type_ or a.settings.creds.default_key_type,
                                bits=bits, comment=comment)
        doc = keys.key_to_dict(session, key)
    out.emit(doc, lambda c: c.print(f"{doc['name']} {doc['type']} {doc['bits']} {doc['fingerprint']}", markup=False))


@app.command("import")
def import_(
    ctx: typer.Context,
    name: str,
    path: Annotated[Path, typer.Argument(help="Private key file (OpenSSH, PEM or DER).")],
    passphrase_stdin: Annotated[bool, typer.Option(help="Read the key's passphrase from stdin.")] = False,
    comment: Annotated[str | None, typer.Option(help="Comment (default: the key's own, if any).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Import a private key; encrypted keys ask for their passphrase (or read it from stdin)."""
    from unityctl.core.errors import UsageError
    from unityctl.creds import keys

    try:
        data = path.read_bytes()
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror}") from None
    passphrase = read_secret_stdin("passphrase").encode() if passphrase_stdin else None
    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session(write=True) as session:
        try:
            key = keys.import_key(session, keyring, name=name, data=data, passphrase=passphrase, comment=comment)
        except UsageError as exc:
            if passphrase is not None or "passphrase" not in exc.message.lower():
                raise
            passphrase = prompt_secret("passphrase of the key").encode()
            key = keys.import_key(session, keyring, name=name, data=data, passphrase=passphrase, comment=comment)
        doc = keys.key_to_dict(session, key)
    if doc["weak"]:
        out.warn(f"key {name} is weak: {doc['weakness']}")
    out.emit(doc, lambda c: c.print(f"{doc['name']} {doc['type']} {doc['bits']} {doc['fingerprint']}", markup=False))


@app.command("list")
def list_(
    ctx: typer.Context,
    active: Annotated[bool, typer.Option("--active", help="Only active keys (hide retired ones).")] = False,
    json_: JsonOpt = False,
) -> None:
    """List keys: type, size, fingerprint, where deployed, last use; weak keys are flagged."""
    from unityctl.creds import keys

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        docs = [keys.key_to_dict(session, k) for k in keys.list_keys(session, include_retired=not active)]
    out.emit(docs, lambda c: out.table(["name", "type", "bits", "fingerprint", "status", "servers", "last used",
                                        "weak"], [_key_row(d) for d in docs],
                                       empty="no SSH keys: create one with `creds keys generate NAME`"))


@app.command()
def show(ctx: typer.Context, name: str, json_: JsonOpt = False) -> None:
    """Show one key: fingerprint, type, bits, created, last used, where deployed."""
    from unityctl.creds import keys

    a = app_ctx(ctx)
    out = a.output(json_)
    with a.session() as session:
        doc = keys.key_to_dict(session, keys.get_key(session, name), detail=True)

    def render(c: Any) -> None:
        from unityctl.core.output import ago

        c.print(f"name:        {doc['name']} ({doc['status']}, {doc['source']})", markup=False)
        c.print(f"fingerprint: {doc['fingerprint']}", markup=False)
        c.print(f"type:        {doc['type']} {doc['bits']} bits" + (f"  WEAK: {doc['weakness']}" if doc["weak"] else ""),
                markup=False)
        c.print(f"created:     {doc['created_at']:%Y-%m-%d %H:%M} UTC", markup=False)
        c.print(f"last used:   {ago(doc['last_used_at'])}", markup=False)
        c.print(f"public key:  {doc['public_key']}", markup=False)
        if doc["login_key_of"]:
            c.print(f"login key of: {', '.join(doc['login_key_of'])}", markup=False)
        if doc["replaced_by"]:
            c.print(f"replaced by: {doc['replaced_by']}", markup=False)
        if doc["last_rotation"]:
            r = doc["last_rotation"]
            c.print(f"rotation:    #{r['id']} {r['status']}", markup=False)
        out.table(["server", "status", "options", "deployed", "error"],
                  [(d["server"], d["status"], d["options"] or "", ago(d["deployed_at"]), d["last_error"] or "")
                   for d in doc["deployments"]], empty="not deployed anywhere")

    out.emit(doc, render)


@app.command()
def export(
    ctx: typer.Context,
    name: str,
    public: Annotated[bool, typer.Option("--public", help="Print the public key line.")] = False,
    private: Annotated[bool, typer.Option("--private", help="Write the private key to --out (0600).")] = False,
    out_file: Annotated[Path | None, typer.Option("--out", help="File for --private.")] = None,
    force: Annotated[bool, typer.Option(help="Overwrite --out if it exists.")] = False,
    passphrase_stdin: Annotated[bool, typer.Option(help="Encrypt the written key with a passphrase from stdin.")] = False,
) -> None:
    """Export a key: `--public` prints the .pub line; `--private --out FILE` writes the private key."""
    from unityctl.core.errors import UsageError
    from unityctl.creds import keys

    if public == private:
        raise UsageError("give exactly one of --public or --private")
    a = app_ctx(ctx)
    out = a.output()
    if public:
        with a.session() as session:
            line = keys.get_key(session, name).public_key
        typer.echo(line)
        return
    if out_file is None:
        raise UsageError("--private needs --out FILE (a private key is never printed)")
    passphrase = read_secret_stdin("passphrase").encode() if passphrase_stdin else None
    keyring = a.keyring()
    with a.session(write=True) as session:
        path = keys.export_private_file(session, keyring, name=name, out=out_file, force=force, passphrase=passphrase)
    out.success(f"private key of {name} written to {path} (mode 0600)")


@app.command()
def delete(
    ctx: typer.Context,
    name: str,
    revoke: Annotated[bool, typer.Option("--revoke", help="First remove the key from every server it is on.")] = False,
) -> None:
    """Delete a key (refused while it is deployed anywhere, unless --revoke takes it off first)."""
    from unityctl.core.errors import PartialFailure
    from unityctl.creds import distribution, keys

    a = app_ctx(ctx)
    out = a.output()
    keyring = a.keyring()
    if revoke:
        with a.session(write=True) as session:
            key = keys.get_key(session, name)
            docs = (distribution.revoke_key(session, keyring, name=name, ssh=a.settings.ssh)
                    if distribution.live_servers_of(session, key) else [])
        failed = [d for d in docs if d["status"] == "failed"]
        if failed:
            _render_batch(out, docs)
            raise PartialFailure(f"key {name} not deleted: {distribution.summary(docs, 'removed')}")
    with a.session(write=True) as session:
        keys.delete_key(session, keyring, name=name)
    out.success(f"key {name} deleted")


def _render_batch(out: Any, docs: list[dict[str, Any]], *, diffs: bool = False) -> None:
    if diffs:
        for d in docs:
            if d.get("diff"):
                out.out.print(f"--- {d['server']}", markup=False)
                out.out.print(d["diff"].rstrip("\n"), markup=False, highlight=False)
    out.table(["server", "result", "error"], [(d["server"], d["status"], d["error"] or "") for d in docs])


def _batch(ctx: typer.Context, json_: bool, dry_run: bool, verb: str, call) -> None:  # type: ignore[no-untyped-def]
    from unityctl.core.errors import PartialFailure
    from unityctl.creds import distribution

    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session(write=True) as session:
        docs = call(a, session, keyring, out)
    out.emit(docs, lambda c: _render_batch(out, docs, diffs=dry_run))
    if any(d["status"] == "failed" for d in docs):
        raise PartialFailure(distribution.summary(docs, verb))
    if not dry_run:
        out.success(distribution.summary(docs, verb))


@app.command()
def deploy(
    ctx: typer.Context,
    name: str,
    to: Annotated[list[str], typer.Option("--to", help="Server (repeatable).")],
    options: Annotated[str | None, typer.Option(help="authorized_keys options, e.g. 'from=\"10.0.0.0/8\",no-pty'.")] = None,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Add the key to servers' authorized_keys (in parallel; other lines are never touched)."""

    def call(a, session, keyring, out):  # type: ignore[no-untyped-def]
        from unityctl.creds import distribution

        progress, tick = _progress(out, len(to), f"deploying {name}")
        with progress or _null():
            return distribution.deploy_key(session, keyring, name=name, to=to, options=options, dry_run=dry_run,
                                           ssh=a.settings.ssh, on_result=tick)

    _batch(ctx, json_, dry_run, "deployed", call)


@app.command()
def revoke(
    ctx: typer.Context,
    name: str,
    from_: Annotated[list[str] | None, typer.Option("--from", help="Server (repeatable; default: everywhere).")] = None,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Remove the key's lines (only those unityctl added) from servers."""

    def call(a, session, keyring, out):  # type: ignore[no-untyped-def]
        from unityctl.creds import distribution

        return distribution.revoke_key(session, keyring, name=name, from_=from_, dry_run=dry_run, ssh=a.settings.ssh)

    _batch(ctx, json_, dry_run, "removed", call)


class _null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@app.command()
def rotate(
    ctx: typer.Context,
    name: str,
    server: Annotated[list[str] | None, typer.Option("--server", help="Only this server (repeatable).")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Finish the servers an earlier rotation missed.")] = False,
    dry_run: DryRunOpt = False,
    json_: JsonOpt = False,
) -> None:
    """Replace a key everywhere without locking anyone out (exit 3 if a server kept the old key)."""
    from unityctl.core.errors import PartialFailure
    from unityctl.creds import rotation

    a = app_ctx(ctx)
    out = a.output(json_)
    report = rotation.rotate_key(a.engine(), a.keyring(), name=name, servers=server, resume=resume,
                                 dry_run=dry_run, ssh=a.settings.ssh)
    doc = report.to_dict()

    def render(c: Any) -> None:
        if dry_run:
            for s in doc["servers"]:
                if s["diff"]:
                    c.print(f"--- {s['server']}", markup=False)
                    c.print(s["diff"].rstrip("\n"), markup=False, highlight=False)
        out.table(["server", "result", "step", "error"],
                  [(s["server"], s["status"], s["step"], s["error"] or "") for s in doc["servers"]],
                  title=None if dry_run else f"rotation #{doc['rotation_id']}: {doc['old_key']} -> {doc['new_key']}")

    out.emit(doc, render)
    failed = report.failed
    if failed:
        raise PartialFailure(f"rotation #{report.rotation_id}: {len(report.servers) - len(failed)} of "
                             f"{len(report.servers)} server(s) rotated; kept the old key: "
                             f"{', '.join(s.server for s in failed)}; finish with `creds keys rotate {report.new_key} "
                             "--resume`")
    if not dry_run:
        out.success(f"rotation #{report.rotation_id} {report.status}: {report.new_key} replaced {report.old_key}")


@app.command()
def unused(
    ctx: typer.Context,
    days: Annotated[int | None, typer.Option(help="Unused for this many days (default: creds.unused_key_days).")] = None,
    no_logs: Annotated[bool, typer.Option("--no-logs", help="Do not read sshd logs on the servers.")] = False,
    log_path: Annotated[list[str] | None, typer.Option("--log-path", help="sshd log file on the servers "
                                                       "(repeatable; default: /var/log/auth.log, /var/log/secure).")] = None,
    json_: JsonOpt = False,
) -> None:
    """Find keys not used for N days (raises/clears the 'unused_key' alert; the daemon runs this too)."""
    from unityctl.core.output import ago
    from unityctl.creds import usage

    a = app_ctx(ctx)
    out = a.output(json_)
    keyring = a.keyring()
    with a.session(write=True) as session:
        docs = usage.check_unused_keys(session, keyring, settings=a.settings, days=days, read_logs=not no_logs,
                                       log_paths=log_path)
    out.emit(docs, lambda c: out.table(["key", "last used", "source", "unused"],
                                       [(d["key"], ago(d["last_used_at"]), d["source"] or "-",
                                         "UNUSED" if d["unused"] else "") for d in docs], empty="no active keys"))
