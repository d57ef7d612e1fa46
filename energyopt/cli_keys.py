"""`energyopt keys create|list|revoke`: the service's API keys (serving/auth.py, docs/security.md).

The key file is what the service's `args.api_keys` names; replicas re-read it when it changes, so a created
or revoked key takes effect within about a second, without a restart.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)

keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke the service's API keys.")
DEFAULT_FILE = Path("runs/api-keys.json")


def _file_option() -> Path:
    return typer.Option(DEFAULT_FILE, "--file", help="The key file (the service's args.api_keys).")


def _fail(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(2)


@keys_app.command("create")
def create(
    name: str = typer.Option(..., help="The key's name (who or what uses it), unique in the file."),
    role: str = typer.Option("read", help="read (forecasts, lists), write (+ ingest readings) or operate "
                                          "(+ dispatch)."),
    file: Path = _file_option(),
) -> None:
    """Add a key and print its token, once: the file keeps only its SHA-256."""
    from serving.auth import AuthError, create_key

    try:
        token = create_key(file, name, role)
    except (AuthError, OSError) as err:
        _fail(str(err))
    err_console.print(f"key {name!r} ({role}) added to {file}; its token (shown only now; send it as "
                      "'authorization: Bearer <token>', or set ENERGYOPT_API_KEY):", highlight=False)
    print(token)


@keys_app.command("list")
def list_keys(file: Path = _file_option()) -> None:
    """The keys of the file: name, role, created (never the tokens: the file does not hold them)."""
    from serving.auth import AuthError, read_keys

    try:
        keys = read_keys(file)
    except AuthError as err:
        _fail(str(err))
    table = Table(title=f"{len(keys)} API key(s) in {file}")
    for column in ("name", "role", "created", "hash"):
        table.add_column(column)
    for k in keys:
        table.add_row(k.name, k.role, k.created, k.hash[:19] + "...")
    console.print(table)


@keys_app.command("revoke")
def revoke(
    name: str = typer.Argument(..., help="The key's name."),
    file: Path = _file_option(),
) -> None:
    """Remove a key: running replicas refuse it within about a second."""
    from serving.auth import AuthError, revoke_key

    try:
        key = revoke_key(file, name)
    except (AuthError, OSError) as err:
        _fail(str(err))
    console.print(f"revoked key {key.name!r} ({key.role}) in {file}", highlight=False)
