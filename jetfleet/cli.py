"""The ``jetfleet`` command line. Sub-commands import their side lazily, so an agent
install (``jetfleet[agent]``) runs ``jetfleet agent run`` without server or builder deps."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from jetfleet import __version__
from jetfleet.errors import JetfleetError

app = typer.Typer(
    help="jetfleet: build, sign, ship and self-heal models on Jetson fleets.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
agent_app = typer.Typer(help="The edge agent daemon.", no_args_is_help=True)
server_app = typer.Typer(help="The fleet server.", no_args_is_help=True)
package_app = typer.Typer(help="Model packages.", no_args_is_help=True)
release_app = typer.Typer(help="Releases.", no_args_is_help=True)
device_app = typer.Typer(help="Devices.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")
app.add_typer(server_app, name="server")
app.add_typer(package_app, name="package")
app.add_typer(release_app, name="release")
app.add_typer(device_app, name="device")

ServerUrl = Annotated[
    str, typer.Option("--server", envvar="JETFLEET_SERVER_URL", help="Fleet server base URL.")
]
Token = Annotated[str | None, typer.Option("--token", envvar="JETFLEET_TOKEN", help="API token.")]
LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


def _logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=LOG_FORMAT)
    for noisy in ("amqtt", "transitions", "uvicorn.access", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _fail(exc: Exception) -> typer.Exit:
    typer.echo(f"error: {exc}", err=True)
    return typer.Exit(2)


def _echo_json(value: Any) -> None:
    typer.echo(json.dumps(value, indent=2, sort_keys=True))


@app.command()
def version() -> None:
    """Print the jetfleet version."""
    typer.echo(__version__)


@agent_app.command("run")
def agent_run(
    config: Annotated[Path, typer.Option("--config", "-c", help="agent.yaml")],
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the edge agent until SIGTERM / Ctrl-C."""
    _logging(verbose)
    from edge_agent import run_agent

    raise typer.Exit(run_agent(config))


@server_app.command("run")
def server_run(
    host: Annotated[str | None, typer.Option(help="HTTP bind host")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port")] = None,
    verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False,
) -> None:
    """Run the fleet server (REST API, MQTT gateway; embedded broker unless a URL is set)."""
    _logging(verbose)
    from fleet_server import get_settings, run_server

    settings = get_settings()
    updates: dict[str, Any] = {}
    if host is not None:
        updates["http_host"] = host
    if port is not None:
        updates["http_port"] = port
    run_server(settings.model_copy(update=updates) if updates else settings)


@app.command()
def demo(
    agents: Annotated[int, typer.Option(min=1, max=20, help="Number of agent processes.")] = 3,
    once: Annotated[bool, typer.Option(help="Run to the end, print a summary, exit.")] = False,
    workdir: Annotated[Path, typer.Option(help="Scratch dir (wiped at start).")] = Path(".demo"),
    timeout: Annotated[float, typer.Option(help="Seconds to reach all-serving.")] = 300.0,
) -> None:
    """Embedded broker + server + N agents: build, release, roll out, serve, report."""
    _logging(False)
    from jetfleet.demo import run_demo

    raise typer.Exit(run_demo(agents=agents, once=once, workdir=workdir, timeout=timeout))


@app.command()
def build(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML")],
    out: Annotated[Path, typer.Option("-o", "--out", help="Output directory")] = Path("dist"),
) -> None:
    """Build a model package from a recipe (prune, distill, INT8, evaluate, package)."""
    _logging(False)
    from model_builder import BuilderError, build_file, format_stage_table

    try:
        result = build_file(recipe, out)
    except BuilderError as exc:
        raise _fail(exc) from exc
    typer.echo(format_stage_table(result))
    typer.echo(f"package: {result.package.path} sha256={result.package.sha256}")


@package_app.command("inspect")
def package_inspect(path: Path) -> None:
    """Validate a package and print its card."""
    from jetfleet.package import read_package

    try:
        pkg = read_package(path)
    except JetfleetError as exc:
        raise _fail(exc) from exc
    _echo_json(
        {
            "sha256": pkg.sha256,
            "length": pkg.length,
            "members": pkg.members,
            "card": pkg.card.model_dump(mode="json"),
        }
    )


@package_app.command("upload")
def package_upload(
    path: Path, server: ServerUrl = "http://127.0.0.1:8400", token: Token = None
) -> None:
    """Upload a package to the fleet server."""
    from jetfleet.client import FleetClient

    try:
        _echo_json(FleetClient(server, token).upload_package(path))
    except JetfleetError as exc:
        raise _fail(exc) from exc


@release_app.command("create")
def release_create(
    name: str,
    package: Annotated[str, typer.Option(help="package sha256")],
    notes: str = "",
    server: ServerUrl = "http://127.0.0.1:8400",
    token: Token = None,
) -> None:
    """Create a release from an uploaded package."""
    from jetfleet.client import FleetClient

    try:
        _echo_json(
            FleetClient(server, token).post(
                "/api/v1/releases", {"name": name, "package_sha256": package, "notes": notes}
            )
        )
    except JetfleetError as exc:
        raise _fail(exc) from exc


@release_app.command("assign")
def release_assign(
    name: str,
    device: Annotated[list[str], typer.Option("--device", "-d", help="device id")],
    server: ServerUrl = "http://127.0.0.1:8400",
    token: Token = None,
) -> None:
    """Assign a release to devices (each gets a new, higher-sequence desired assignment)."""
    from jetfleet.client import FleetClient

    try:
        _echo_json(
            FleetClient(server, token).post(
                "/api/v1/assignments", {"release": name, "device_ids": device}
            )
        )
    except JetfleetError as exc:
        raise _fail(exc) from exc


@device_app.command("list")
def device_list(server: ServerUrl = "http://127.0.0.1:8400", token: Token = None) -> None:
    """List devices with their status and active release."""
    from jetfleet.client import FleetClient

    try:
        devices = FleetClient(server, token).get("/api/v1/devices")
    except JetfleetError as exc:
        raise _fail(exc) from exc
    for d in devices:
        state = "online " if d.get("online") else "offline"
        typer.echo(
            f"{d['id']:<24} {state} {d.get('active_release') or '-':<20} {d.get('profile') or ''}"
        )


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
