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
rollout_app = typer.Typer(help="Rollouts in waves with health gates.", no_args_is_help=True)
broker_app = typer.Typer(help="The MQTT broker (Mosquitto) configuration.", no_args_is_help=True)
user_app = typer.Typer(help="Console/API users and tokens.", no_args_is_help=True)
keys_app = typer.Typer(help="TUF and director keys.", no_args_is_help=True)
app.add_typer(agent_app, name="agent")
app.add_typer(server_app, name="server")
app.add_typer(package_app, name="package")
app.add_typer(release_app, name="release")
app.add_typer(device_app, name="device")
app.add_typer(rollout_app, name="rollout")
app.add_typer(broker_app, name="broker")
app.add_typer(user_app, name="user")
app.add_typer(keys_app, name="keys")
KeysDir = Annotated[
    Path,
    typer.Option(
        "--keys-dir", envvar="JETFLEET_KEYS_DIR", help="Keys directory (TUF roles + director)."
    ),
]
CaDir = Annotated[
    Path,
    typer.Option(
        "--ca-dir", envvar="JETFLEET_CA_DIR", help="Fleet CA directory (created on first use)."
    ),
]

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


def _tags(values: list[str]) -> dict[str, str]:
    tags: dict[str, str] = {}
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise typer.BadParameter(f"tag {item!r} must look like key=value")
        tags[key] = value
    return tags


@broker_app.command("config")
def broker_config(
    out: Annotated[Path, typer.Option("--out", help="Directory for mosquitto.conf, acl, certs")],
    ca_dir: CaDir = Path("var/server/ca"),
    host: Annotated[list[str] | None, typer.Option("--host", help="Broker DNS names/IPs")] = None,
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8883,
) -> None:
    """Write a Mosquitto mTLS config + per-device ACL, the broker cert and the server identity."""
    from fleet_server.enrollment import setup_broker
    from fleet_server.pki import PkiError

    try:
        result = setup_broker(ca_dir, out, hosts=host or ["127.0.0.1", "localhost"], port=port)
    except (PkiError, OSError) as exc:
        raise _fail(exc) from exc
    typer.echo(
        f"mosquitto config: {result.config.conf}\nACL: {result.config.acl}\n"
        f"server identity (JETFLEET_BROKER_CERT_FILE/KEY_FILE/CA_FILE): "
        f"{result.server_identity_dir}"
    )


@device_app.command("enroll")
def device_enroll(
    name: str,
    tags: Annotated[list[str] | None, typer.Option("--tags", help="key=value, repeatable")] = None,
    out: Annotated[Path | None, typer.Option("--out", help="Bundle directory")] = None,
    broker_host: Annotated[str, typer.Option(help="Broker host the device connects to")] = (
        "127.0.0.1"
    ),
    broker_port: Annotated[int, typer.Option(min=1, max=65535)] = 8883,
    ca_dir: CaDir = Path("var/server/ca"),
    register: Annotated[bool, typer.Option(help="Create the device record on the server")] = True,
    keys_dir: KeysDir = Path("var/server/keys"),
    server: ServerUrl = "http://127.0.0.1:8400",
    token: Token = None,
) -> None:
    """Create the device record and write its bundle (key, cert, CA, agent.yaml)."""
    from fleet_server.enrollment import enroll_device
    from fleet_server.pki import PkiError
    from jetfleet.client import ApiError, FleetClient

    tag_map = _tags(tags or [])
    if register:
        try:
            FleetClient(server, token).post("/api/v1/devices", {"id": name, "tags": tag_map})
        except ApiError as exc:
            if exc.status != 409:
                raise _fail(exc) from exc
    try:
        bundle = enroll_device(
            ca_dir,
            out or Path(f"bundle-{name}"),
            name,
            broker_host=broker_host,
            broker_port=broker_port,
            tags=tag_map,
        )
    except (PkiError, JetfleetError, OSError) as exc:
        raise _fail(exc) from exc
    typer.echo(
        f"bundle: {bundle.directory} (certificate serial {bundle.serial})\n"
        f"on the device: jetfleet agent run --config {bundle.agent_yaml}"
    )


@device_app.command("revoke")
def device_revoke(name: str, ca_dir: CaDir = Path("var/server/ca")) -> None:
    """Revoke a device's certificates and rewrite the CRL (then SIGHUP the broker)."""
    from fleet_server.enrollment import revoke_device
    from fleet_server.pki import PkiError

    try:
        serials = revoke_device(ca_dir, name)
    except (PkiError, OSError) as exc:
        raise _fail(exc) from exc
    typer.echo(
        f"revoked serials {serials}; send SIGHUP to mosquitto to reload the CRL "
        "(restart it to drop sessions already open)"
    )


@keys_app.command("init")
def keys_init(
    keys_dir: KeysDir = Path("var/server/keys"),
    root_keys: Annotated[int, typer.Option(min=1, max=9)] = 1,
    root_threshold: Annotated[int, typer.Option(min=1, max=9)] = 1,
) -> None:
    """Create the TUF root (offline), online role keys, the director key, metadata v1."""
    from fleet_server.errors import FleetServerError
    from fleet_server.keys import init_keys

    try:
        metadata = init_keys(keys_dir, root_keys=root_keys, root_threshold=root_threshold)
    except (FleetServerError, OSError) as exc:
        raise _fail(exc) from exc
    typer.echo(
        f"TUF metadata: {metadata}\n"
        f"move {keys_dir / 'root'} offline now; devices trust "
        f"{metadata / '1.root.json'} and {keys_dir / 'director.pub'}"
    )


@keys_app.command("rotate")
def keys_rotate(
    role: Annotated[str, typer.Option(help="root, targets, snapshot, timestamp or director")],
    keys_dir: KeysDir = Path("var/server/keys"),
    root_key_dir: Annotated[
        Path | None, typer.Option(help="Where the offline root keys are")
    ] = None,
) -> None:
    """Rotate a role's key; root rotations are signed by the old and new root keys."""
    from fleet_server.errors import FleetServerError
    from fleet_server.keys import rotate_director, rotate_key

    try:
        if role == "director":
            typer.echo(f"new director key: {rotate_director(keys_dir)} (update every agent.yaml)")
            return
        version = rotate_key(keys_dir, role, root_key_dir=root_key_dir)
    except (FleetServerError, OSError) as exc:
        raise _fail(exc) from exc
    typer.echo(f"{role} rotated; root is now version {version}")


@user_app.command("create")
def user_create(
    name: str,
    role: Annotated[str, typer.Option(help="admin, operator or viewer")] = "viewer",
    password_stdin: Annotated[bool, typer.Option("--password-stdin")] = False,
) -> None:
    """Create a user in the server's database (the first admin, for instance)."""
    from fleet_server import get_settings
    from fleet_server.auth import create_user
    from fleet_server.db import make_engine
    from fleet_server.errors import FleetServerError

    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        user = create_user(make_engine(get_settings().db_url), name, password, role)
    except FleetServerError as exc:
        raise _fail(exc) from exc
    typer.echo(f"created {user.role} {user.name}")


@user_app.command("token")
def user_token(name: str, label: Annotated[str, typer.Option(help="token name")] = "cli") -> None:
    """Issue an API token for a user; it is shown once (use as JETFLEET_TOKEN)."""
    from fleet_server import get_settings
    from fleet_server.auth import create_api_token
    from fleet_server.db import make_engine
    from fleet_server.errors import FleetServerError

    try:
        typer.echo(create_api_token(make_engine(get_settings().db_url), name, label))
    except FleetServerError as exc:
        raise _fail(exc) from exc


def format_rollout(r: dict[str, Any]) -> str:
    """A rollout as text: waves, gate decisions with their numbers, devices."""
    selector = ",".join(f"{k}={v}" for k, v in sorted(r.get("selector", {}).items()))
    lines = [
        f"rollout {r['id']}  {r['release']}  [{r['status']}]  selector {selector}  "
        f"waves {','.join(str(w) for w in r.get('waves', []))} -> {r.get('plan')}",
    ]
    if r.get("reason"):
        lines.append(f"  reason: {r['reason']}")
    gates = {g["wave"]: g for g in r.get("gates", [])}
    for w in r.get("wave_plan", []):
        g = gates.get(w["index"])
        verdict = (
            "" if g is None else f"  gate: {'pass' if g['passed'] else 'FAIL'} ({g['reason']})"
        )
        lines.append(
            f"  wave {w['index']} ({w['target']} cum.) {w['state']:<7} "
            f"{', '.join(w['devices'])}{verdict}"
        )
        if g is not None:
            n = g.get("numbers", {})
            lines.append(
                f"    failures {n.get('failures')}/{n.get('executions')}  "
                f"reverts {n.get('reverts')}  p95 {n.get('p95_new_ms')} vs "
                f"{n.get('p95_baseline_ms')} ms  err {n.get('error_rate_new')}"
            )
    for d in r.get("devices", []):
        back = f"  rollback seq {d['rollback_sequence']}" if d.get("rollback_sequence") else ""
        lines.append(
            f"  {d['device_id']:<20} wave {d['wave']}  seq {d['sequence']}  "
            f"{d['status']:<10} prev {d['previous_release']}{back}"
        )
    return "\n".join(lines)


def _duration(text: str) -> float:
    """``90``, ``90s``, ``10m``, ``1h`` → seconds."""
    units = {"s": 1, "m": 60, "h": 3600}
    text = text.strip()
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError as exc:
        raise typer.BadParameter(f"{text!r} is not a duration like 90s, 10m or 1h") from exc


@rollout_app.command("create")
def rollout_create(
    release: str,
    selector: Annotated[str, typer.Option(help="tags to match, e.g. site=lab,rack=2")],
    waves: Annotated[str, typer.Option(help="cumulative waves")] = "1,10%,50%,100%",
    bake: Annotated[str, typer.Option(help="bake time per wave (90s, 10m)")] = "600s",
    wave_timeout: Annotated[str, typer.Option(help="time for a wave to reach trial")] = "1h",
    max_failures: Annotated[int, typer.Option(min=0)] = 0,
    max_failure_rate: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.0,
    min_executions: Annotated[int, typer.Option(min=1)] = 1,
    max_p95_ratio: Annotated[float, typer.Option(min=1.0)] = 1.5,
    max_error_rate: Annotated[float, typer.Option(min=0.0, max=1.0)] = 0.05,
    auto_rollback: Annotated[bool, typer.Option("--auto-rollback/--no-auto-rollback")] = True,
    server: ServerUrl = "http://127.0.0.1:8400",
    token: Token = None,
) -> None:
    """Roll a release out to the devices matching a selector, wave by wave."""
    from jetfleet.client import FleetClient

    body = {
        "release": release,
        "selector": selector,
        "waves": waves,
        "bake_s": _duration(bake),
        "wave_timeout_s": _duration(wave_timeout),
        "max_failures": max_failures,
        "max_failure_rate": max_failure_rate,
        "min_executions": min_executions,
        "max_p95_ratio": max_p95_ratio,
        "max_error_rate": max_error_rate,
        "auto_rollback": auto_rollback,
    }
    try:
        typer.echo(format_rollout(FleetClient(server, token).post("/api/v1/rollouts", body)))
    except JetfleetError as exc:
        raise _fail(exc) from exc


@rollout_app.command("show")
def rollout_show(
    rollout_id: int, server: ServerUrl = "http://127.0.0.1:8400", token: Token = None
) -> None:
    """Show a rollout: waves, per-device status, every gate decision with its numbers."""
    from jetfleet.client import FleetClient

    try:
        typer.echo(format_rollout(FleetClient(server, token).get(f"/api/v1/rollouts/{rollout_id}")))
    except JetfleetError as exc:
        raise _fail(exc) from exc


def _rollout_action(action: str) -> None:
    def command(
        rollout_id: int, server: ServerUrl = "http://127.0.0.1:8400", token: Token = None
    ) -> None:
        from jetfleet.client import FleetClient

        try:
            result = FleetClient(server, token).post(f"/api/v1/rollouts/{rollout_id}/{action}", {})
        except JetfleetError as exc:
            raise _fail(exc) from exc
        typer.echo(format_rollout(result))

    command.__doc__ = f"{action.capitalize()} a rollout."
    rollout_app.command(action)(command)


for _action in ("pause", "resume", "abort", "rollback"):
    _rollout_action(_action)


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
