"""`unityctl creds`: SSH keys, server logins, SSH CA, TLS certificates.

Sub-apps live in their own modules (cli_keys, cli_servers, cli_ca for SSH; cli_certs for TLS
certificates, step-ca and metrics). Each command imports its services inside its function, so
building this group stays cheap.
"""

from __future__ import annotations

import typer

from unityctl.creds.cli_ca import app as ca_app
from unityctl.creds.cli_keys import app as keys_app
from unityctl.creds.cli_servers import app as servers_app

app = typer.Typer(help="Credentials: SSH keys, server logins, SSH CA, TLS certificates.", no_args_is_help=True)


@app.callback()
def _group() -> None:
    """Credentials: SSH keys, server logins, SSH CA, TLS certificates."""


app.add_typer(keys_app, name="keys")
app.add_typer(servers_app, name="servers")
app.add_typer(ca_app, name="ca")

# TLS certificates, step-ca and metrics come from cli_certs (written alongside, by the certs work).
# Guarded so the SSH commands keep working while that module does not exist yet; an error INSIDE
# an existing cli_certs is not hidden (only the module's absence is).
try:
    from unityctl.creds.cli_certs import certs_app, metrics, stepca_app
except ModuleNotFoundError as exc:  # pragma: no cover - only before cli_certs exists
    if exc.name != "unityctl.creds.cli_certs":
        raise
else:
    app.add_typer(certs_app, name="certs")
    app.add_typer(stepca_app, name="step-ca")
    app.command("metrics")(metrics)
