"""REST and console auth: tokens, roles, CSRF, the audit log, stored password hashes."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlmodel import Session, select

from fleet_server import create_app
from fleet_server.auth import create_api_token, create_user
from fleet_server.auth_models import AuditEntry, User
from tests.server.conftest import make_settings
from tests.support.mosquitto import MosquittoBroker


@pytest.fixture
def secured(tmp_path: Path, mosquitto: MosquittoBroker) -> Iterator[TestClient]:
    app = create_app(make_settings(tmp_path, broker_url=mosquitto.url, auth_enabled=True))
    engine = app.state.context.engine
    with TestClient(app) as client:
        for name, role in (("ada", "admin"), ("otto", "operator"), ("vic", "viewer")):
            create_user(engine, name, f"{name}-password", role)
        yield client


def bearer(client: TestClient, user: str) -> dict[str, str]:
    engine = client.app.state.context.engine  # type: ignore[attr-defined]
    return {"Authorization": f"Bearer {create_api_token(engine, user, 'test')}"}


def audit_rows(client: TestClient) -> list[AuditEntry]:
    with Session(client.app.state.context.engine) as session:  # type: ignore[attr-defined]
        return list(session.exec(select(AuditEntry).order_by(AuditEntry.id)).all())


def login(client: TestClient, name: str) -> str:
    """Log in through the form; the session's CSRF token."""
    page = client.get("/console/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token is not None
    r = client.post(
        "/console/login",
        data={"name": name, "password": f"{name}-password", "csrf_token": token.group(1)},
        follow_redirects=False,
    )
    assert r.status_code == 303, r.text
    overview = client.get("/console/overview")
    csrf = re.search(r'<meta name="csrf-token" content="([^"]+)"', overview.text)
    assert csrf is not None
    return csrf.group(1)


def test_rest_without_token_is_401(secured: TestClient) -> None:
    for method, url in (("get", "/api/v1/devices"), ("post", "/api/v1/devices")):
        r = secured.request(method, url, json={"id": "cam-1"})
        assert r.status_code == 401, url
        assert r.headers["www-authenticate"] == "Bearer"
    r = secured.get("/api/v1/devices", headers={"Authorization": "Bearer jf_not-a-token"})
    assert r.status_code == 401
    assert secured.get("/healthz").status_code == 200  # load balancers need no token


def test_viewer_reads_but_cannot_mutate(secured: TestClient) -> None:
    viewer = bearer(secured, "vic")
    assert secured.get("/api/v1/devices", headers=viewer).json() == []
    r = secured.post("/api/v1/devices", json={"id": "cam-1"}, headers=viewer)
    assert r.status_code == 403
    assert "needs operator" in r.json()["detail"]
    operator = bearer(secured, "otto")
    assert (
        secured.post("/api/v1/devices", json={"id": "cam-1"}, headers=operator).status_code == 201
    )
    assert [d["id"] for d in secured.get("/api/v1/devices", headers=viewer).json()] == ["cam-1"]


def test_operator_cannot_manage_users_admin_can(secured: TestClient) -> None:
    body = {"name": "eve", "password": "eve-password", "role": "admin"}
    operator = bearer(secured, "otto")
    assert secured.post("/api/v1/users", json=body, headers=operator).status_code == 403
    assert secured.get("/api/v1/users", headers=operator).status_code == 403
    assert secured.post("/api/v1/tokens", json={"name": "x"}, headers=operator).status_code == 403
    admin = bearer(secured, "ada")
    r = secured.post("/api/v1/users", json=body, headers=admin)
    assert r.status_code == 201, r.text
    assert "password" not in r.json()
    assert "password_hash" not in r.json()
    names = [u["name"] for u in secured.get("/api/v1/users", headers=admin).json()]
    assert names == ["ada", "eve", "otto", "vic"]


def test_revoked_token_stops_working(secured: TestClient) -> None:
    admin = bearer(secured, "ada")
    issued = secured.post("/api/v1/tokens", json={"name": "ci", "user": "otto"}, headers=admin)
    assert issued.status_code == 201
    token = issued.json()["token"]
    ci = {"Authorization": f"Bearer {token}"}
    assert secured.get("/api/v1/devices", headers=ci).status_code == 200
    listed = secured.get("/api/v1/tokens", headers=admin).json()
    assert all("token" not in t for t in listed)  # shown once, never listed
    revoked = secured.delete(f"/api/v1/tokens/{issued.json()['id']}", headers=admin)
    assert revoked.status_code == 200
    assert revoked.json()["revoked_at"] is not None
    assert secured.get("/api/v1/devices", headers=ci).status_code == 401


def test_password_stored_as_argon2_hash(secured: TestClient) -> None:
    with Session(secured.app.state.context.engine) as session:  # type: ignore[attr-defined]
        user = session.exec(select(User).where(User.name == "ada")).one()
    assert user.password_hash.startswith("$argon2id$")
    assert "ada-password" not in user.password_hash
    page = secured.get("/console/login")
    csrf = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert csrf is not None
    wrong = {"name": "ada", "password": "nope-nope", "csrf_token": csrf.group(1)}
    assert secured.post("/console/login", data=wrong).status_code == 401


def test_console_requires_login(secured: TestClient) -> None:
    r = secured.get("/console/devices", follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"].startswith("/console/login")


def test_console_post_without_csrf_is_403(secured: TestClient) -> None:
    secured.post("/api/v1/devices", json={"id": "cam-1"}, headers=bearer(secured, "otto"))
    csrf = login(secured, "otto")
    r = secured.post("/console/devices/cam-1/rollback", follow_redirects=False)
    assert r.status_code == 403
    r = secured.post("/console/devices/cam-1/rollback", data={"csrf_token": "forged"})
    assert r.status_code == 403
    r = secured.post(
        "/console/devices/cam-1/rollback", data={"csrf_token": csrf}, follow_redirects=False
    )
    assert r.status_code == 303  # accepted (nothing to roll back to: a message, no change)
    assert "No+known-good" in r.headers["location"] or "No%20known-good" in r.headers["location"]
    # A login post without the login form's token is refused too.
    fresh = TestClient(secured.app)
    r = fresh.post("/console/login", data={"name": "otto", "password": "otto-password"})
    assert r.status_code == 403


def test_viewer_console_post_is_403_and_shows_no_buttons(secured: TestClient) -> None:
    secured.post("/api/v1/devices", json={"id": "cam-1"}, headers=bearer(secured, "otto"))
    csrf = login(secured, "vic")
    page = secured.get("/console/devices/cam-1")
    assert page.status_code == 200
    assert 'data-testid="rollback"' not in page.text
    r = secured.post("/console/devices/cam-1/rollback", data={"csrf_token": csrf})
    assert r.status_code == 403
    assert secured.get("/console/settings").status_code == 403
    r = secured.post(
        "/console/settings/users",
        data={"csrf_token": csrf, "name": "mallory", "password": "mallory-pw", "role": "admin"},
    )
    assert r.status_code == 403


def test_mutations_are_audited(secured: TestClient) -> None:
    operator = bearer(secured, "otto")
    viewer = bearer(secured, "vic")
    assert (
        secured.post("/api/v1/devices", json={"id": "cam-1"}, headers=operator).status_code == 201
    )
    assert secured.post("/api/v1/devices", json={"id": "cam-2"}, headers=viewer).status_code == 403
    secured.get("/api/v1/devices", headers=operator)  # reads are not audited
    csrf = login(secured, "ada")
    r = secured.post(
        "/console/settings/users",
        data={"csrf_token": csrf, "name": "newbie", "password": "newbie-password"},
        follow_redirects=False,
    )
    assert r.status_code == 303
    rows = [(a.actor, a.via, a.action, a.target, a.status) for a in audit_rows(secured)]
    assert ("otto", "api", "POST /api/v1/devices", "/api/v1/devices", 201) in rows
    assert ("vic", "api", "POST /api/v1/devices", "/api/v1/devices", 403) in rows
    assert ("ada", "console", "console.login", "ada", 200) in rows
    assert ("ada", "console", "user.create", "newbie", 200) in rows
    assert not any(a.action.startswith("GET") for a in audit_rows(secured))
    created = next(a for a in audit_rows(secured) if a.status == 201)
    assert created.details["body"] == {"id": "cam-1"}
    listed = secured.get("/api/v1/audit", headers=bearer(secured, "ada")).json()
    assert listed[0]["ts"] >= listed[-1]["ts"]


def test_tuf_metadata_is_public_over_http(tmp_path: Path, mosquitto: MosquittoBroker) -> None:
    """Devices fetch TUF metadata without an API token; it is signed, not secret."""
    import json

    from fleet_server.keys import init_keys

    init_keys(tmp_path / "keys")
    settings = make_settings(
        tmp_path, broker_url=mosquitto.url, auth_enabled=True, keys_dir=tmp_path / "keys"
    )
    with TestClient(create_app(settings)) as client:
        timestamp = client.get("/tuf/timestamp.json")
        assert timestamp.status_code == 200
        assert json.loads(timestamp.content)["signed"]["_type"] == "timestamp"
        root = client.get("/tuf/1.root.json")
        assert root.status_code == 200
        assert json.loads(root.content)["signed"]["_type"] == "root"
        assert client.get("/tuf/../settings.py").status_code == 404
        assert client.get("/tuf/99.root.json").status_code == 404
        assert client.get("/api/v1/devices").status_code == 401  # the API stays closed
