"""REST API: devices, packages, releases, assignments, and their refusals."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from fleet_server import create_app
from tests.server.conftest import make_settings, release, upload
from tests.support.mosquitto import MosquittoBroker
from tests.support.tinymodel import make_package


def test_openapi_docs_are_served(api: TestClient) -> None:
    assert api.get("/docs").status_code == 200
    paths = api.get("/openapi.json").json()["paths"]
    assert "/api/v1/packages" in paths
    assert "multipart/form-data" in paths["/api/v1/packages"]["post"]["requestBody"]["content"]


def test_register_get_and_filter_devices(api: TestClient) -> None:
    for device_id, site in (("cam-1", "lab"), ("cam-2", "lab"), ("cam-3", "yard")):
        r = api.post("/api/v1/devices", json={"id": device_id, "tags": {"site": site}})
        assert r.status_code == 201, r.text
    assert api.get("/api/v1/devices/cam-2").json()["tags"] == {"site": "lab"}
    lab = api.get("/api/v1/devices", params={"tag": "site=lab"}).json()
    assert [d["id"] for d in lab] == ["cam-1", "cam-2"]
    assert api.get("/api/v1/devices", params={"tag": "site=moon"}).json() == []
    assert len(api.get("/api/v1/devices", params={"online": "false"}).json()) == 3
    assert api.get("/api/v1/devices", params={"online": "true"}).json() == []
    assert api.get("/api/v1/devices", params={"release": "r1"}).json() == []


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({"id": "bad/id"}, "invalid device id"),
        ({"id": ""}, "id"),
        ({"tags": {"a": "b"}}, "id: Field required"),
        ({"id": "ok", "tags": {"bad key!": "x"}}, "tag key"),
        ({"id": "ok", "tags": "site=lab"}, "tags"),
    ],
)
def test_register_device_refuses_bad_bodies(api: TestClient, body: object, needle: str) -> None:
    r = api.post("/api/v1/devices", json=body)
    assert r.status_code == 422
    assert needle in r.json()["detail"]
    assert api.get("/api/v1/devices").json() == []


def test_register_device_twice_is_a_conflict(api: TestClient) -> None:
    assert api.post("/api/v1/devices", json={"id": "cam-1"}).status_code == 201
    r = api.post("/api/v1/devices", json={"id": "cam-1"})
    assert r.status_code == 409
    assert "already registered" in r.json()["detail"]


def test_unknown_ids_are_404(api: TestClient) -> None:
    missing = "0" * 64
    for url in (
        "/api/v1/devices/nope",
        "/api/v1/devices/nope/assignments",
        f"/api/v1/packages/{missing}",
        f"/api/v1/packages/{missing}/download",
        "/api/v1/releases/nope",
    ):
        r = api.get(url)
        assert r.status_code == 404, url
        assert "does not exist" in r.json()["detail"]
    assert api.get("/api/v1/telemetry", params={"device_id": "nope"}).status_code == 404


def test_bad_query_parameters_are_422(api: TestClient) -> None:
    r = api.get("/api/v1/devices", params={"tag": "site"})
    assert r.status_code == 422
    assert "key=value" in r.json()["detail"]
    r = api.get("/api/v1/telemetry")
    assert r.status_code == 422
    assert "device_id" in r.json()["detail"]
    assert api.get("/api/v1/events", params={"limit": 0}).status_code == 422
    assert api.get("/api/v1/packages/not-a-sha").status_code == 422


def test_upload_list_get_and_download_package(api: TestClient, package_path: Path) -> None:
    data = package_path.read_bytes()
    with package_path.open("rb") as fh:
        r = api.post("/api/v1/packages", files={"file": ("tiny.jfpkg", fh)})
    assert r.status_code == 201, r.text
    body = r.json()
    assert (body["name"], body["version"], body["length"]) == ("tiny", "1", len(data))
    assert body["card"]["variants"] == {"onnxruntime": "model.onnx"}
    sha = body["sha256"]
    assert api.get(f"/api/v1/packages/{sha}").json()["sha256"] == sha
    assert [p["sha256"] for p in api.get("/api/v1/packages").json()] == [sha]
    download = api.get(f"/api/v1/packages/{sha}/download")
    assert download.status_code == 200
    assert download.content == data
    # Uploading the same bytes again is idempotent.
    again = upload(api, package_path)
    assert again["sha256"] == sha
    assert len(api.get("/api/v1/packages").json()) == 1


def test_uploaded_package_is_stored_content_addressed(
    tmp_path: Path, package_path: Path, mosquitto: MosquittoBroker
) -> None:
    settings = make_settings(tmp_path, broker_url=mosquitto.url)
    with TestClient(create_app(settings)) as http:
        sha = upload(http, package_path)["sha256"]
    stored = settings.artifacts_dir / "sha256" / sha[:2] / sha
    assert stored.read_bytes() == package_path.read_bytes()
    assert list((settings.artifacts_dir / "tmp").iterdir()) == []


def _corrupt_card(path: Path, out: Path) -> Path:
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            data = (
                b'{"format": "jetfleet.package/1"}'
                if info.filename == "card.json"
                else src.read(info)
            )
            dst.writestr(info.filename, data)
    return out


@pytest.mark.parametrize(
    ("make_bad", "needle"),
    [
        (lambda p, d: (d / "x.jfpkg", (d / "x.jfpkg").write_bytes(b"not a zip"))[0], "bad zip"),
        (lambda p, d: _corrupt_card(p, d / "card.jfpkg"), "card.json invalid"),
        (lambda p, d: (d / "e.jfpkg", (d / "e.jfpkg").write_bytes(b""))[0], "not a valid"),
    ],
    ids=["not-a-zip", "bad-card", "empty"],
)
def test_invalid_package_is_refused_with_its_reason(
    api: TestClient, package_path: Path, tmp_path: Path, make_bad, needle: str
) -> None:
    bad = make_bad(package_path, tmp_path)
    with bad.open("rb") as fh:
        r = api.post("/api/v1/packages", files={"file": ("bad.jfpkg", fh)})
    assert r.status_code == 422
    assert "not a valid jetfleet package" in r.json()["detail"]
    assert needle in r.json()["detail"]
    assert api.get("/api/v1/packages").json() == []


def test_upload_needs_a_multipart_file_part(api: TestClient) -> None:
    r = api.post("/api/v1/packages", content=b"raw", headers={"content-type": "application/zip"})
    assert r.status_code == 422
    assert "multipart/form-data" in r.json()["detail"]
    r = api.post("/api/v1/packages", files={"other": ("x", b"data")})
    assert r.status_code == 422
    assert "no 'file' part" in r.json()["detail"]


def test_upload_over_the_cap_is_413_and_leaves_nothing(
    tmp_path: Path, mosquitto: MosquittoBroker
) -> None:
    package = make_package(tmp_path / "big.jfpkg", pad_bytes=200_000)
    settings = make_settings(tmp_path, broker_url=mosquitto.url, max_package_bytes=100_000)
    with TestClient(create_app(settings)) as http, package.path.open("rb") as fh:
        r = http.post("/api/v1/packages", files={"file": ("big.jfpkg", fh)})
        assert r.status_code == 413
        assert "limit" in r.json()["detail"]
        assert http.get("/api/v1/packages").json() == []
    assert list((settings.artifacts_dir / "tmp").iterdir()) == []


def test_releases_create_get_list_and_refuse(api: TestClient, package_path: Path) -> None:
    sha = upload(api, package_path)["sha256"]
    r = api.post("/api/v1/releases", json={"name": "tiny-1", "package_sha256": sha, "notes": "hi"})
    assert r.status_code == 201, r.text
    assert api.get("/api/v1/releases/tiny-1").json()["package_sha256"] == sha
    assert [x["name"] for x in api.get("/api/v1/releases").json()] == ["tiny-1"]

    dup = api.post("/api/v1/releases", json={"name": "tiny-1", "package_sha256": sha})
    assert dup.status_code == 409
    assert "already exists" in dup.json()["detail"]
    unknown = api.post("/api/v1/releases", json={"name": "tiny-2", "package_sha256": "a" * 64})
    assert unknown.status_code == 404
    assert "upload it first" in unknown.json()["detail"]
    bad = api.post("/api/v1/releases", json={"name": "no spaces", "package_sha256": sha})
    assert bad.status_code == 422
    assert "name" in bad.json()["detail"]
    assert (
        api.post("/api/v1/releases", json={"name": "x", "package_sha256": "xyz"}).status_code == 422
    )
    assert len(api.get("/api/v1/releases").json()) == 1


def test_assignments_increase_sequence_per_device(api: TestClient, package_path: Path) -> None:
    rel = release(api, package_path)
    for device_id in ("cam-1", "cam-2"):
        api.post("/api/v1/devices", json={"id": device_id})
    first = api.post("/api/v1/assignments", json={"release": "tiny-1", "device_ids": ["cam-1"]})
    assert first.status_code == 201, first.text
    assert [a["sequence"] for a in first.json()] == [1]
    both = api.post(
        "/api/v1/assignments", json={"release": "tiny-1", "device_ids": ["cam-1", "cam-2"]}
    ).json()
    assert {a["device_id"]: a["sequence"] for a in both} == {"cam-1": 2, "cam-2": 1}
    history = api.get("/api/v1/devices/cam-1/assignments").json()
    assert [(a["sequence"], a["status"]) for a in history] == [(2, "issued"), (1, "superseded")]
    assert history[0]["sha256"] == rel["package_sha256"]
    assert api.get("/api/v1/devices/cam-1").json()["desired_sequence"] == 2


def test_assignments_are_all_or_nothing(api: TestClient, package_path: Path) -> None:
    release(api, package_path)
    api.post("/api/v1/devices", json={"id": "cam-1"})
    r = api.post(
        "/api/v1/assignments", json={"release": "tiny-1", "device_ids": ["cam-1", "ghost"]}
    )
    assert r.status_code == 404
    assert "ghost" in r.json()["detail"]
    r = api.post("/api/v1/assignments", json={"release": "nope", "device_ids": ["cam-1"]})
    assert r.status_code == 404
    assert "release 'nope'" in r.json()["detail"]
    assert api.get("/api/v1/devices/cam-1/assignments").json() == []
    assert api.get("/api/v1/devices/cam-1").json()["desired_sequence"] == 0


@pytest.mark.parametrize(
    "body",
    [
        {"release": "tiny-1", "device_ids": []},
        {"release": "tiny-1", "device_ids": ["cam-1", "cam-1"]},
        {"release": "tiny-1", "device_ids": ["bad/id"]},
        {"device_ids": ["cam-1"]},
    ],
    ids=["empty", "duplicates", "bad-id", "no-release"],
)
def test_assignment_bodies_are_validated(api: TestClient, body: dict[str, object]) -> None:
    r = api.post("/api/v1/assignments", json=body)
    assert r.status_code == 422
    assert r.json()["detail"]


def test_healthz_reports_an_unreachable_broker(tmp_path: Path) -> None:
    with TestClient(create_app(make_settings(tmp_path))) as http:
        r = http.get("/healthz")
    assert r.status_code == 503
    assert r.json() == {"status": "degraded", "database": True, "broker": False}


def test_metrics_are_prometheus_text(api: TestClient) -> None:
    r = api.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    for name in (
        "jetfleet_server_inbox_depth",
        "jetfleet_server_blocks_served_total",
        "jetfleet_server_fetch_queue_depth",
    ):
        assert name in r.text
