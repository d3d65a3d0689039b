import json

import pytest

from jetfleet.canonical import canonical_json
from jetfleet.errors import PayloadTooLarge, SchemaError, VersionError
from jetfleet.messages import (
    MAX_PAYLOAD,
    DesiredAssignment,
    FetchRequest,
    StateMessage,
    TelemetryBatch,
    decode,
)

SHA = "ab" * 32


def assignment(**kw):
    base = dict(
        device_id="d1",
        release="r1",
        target=f"packages/{SHA}.jfpkg",
        sha256=SHA,
        length=1000,
        sequence=3,
        issued_at=1.5,
    )
    base.update(kw)
    return DesiredAssignment(**base)


def test_canonical_json_is_stable_and_sorted():
    assert canonical_json({"b": 1, "a": [1, "é"]}) == '{"a":[1,"é"],"b":1}'.encode()
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


def test_round_trip_assignment_and_block_count():
    msg = assignment(length=64 * 1024 * 2 + 1)
    back = decode("desired", msg.to_bytes())
    assert back == msg
    assert back.block_count == 3


def test_signed_payload_excludes_signature():
    a = assignment()
    b = assignment(signature="sig", keyid="k")
    assert a.signed_payload() == b.signed_payload()
    assert b"sig" not in b.signed_payload()


def test_unknown_fields_are_ignored_within_a_version():
    raw = json.loads(assignment().to_bytes())
    raw["future_field"] = {"x": 1}
    assert decode("desired", json.dumps(raw).encode()).release == "r1"


def test_newer_version_is_refused():
    raw = json.loads(assignment().to_bytes())
    raw["v"] = 2
    with pytest.raises(VersionError, match="version 2"):
        decode("desired", json.dumps(raw).encode())


@pytest.mark.parametrize(
    ("payload", "match"),
    [
        (b"not json", "not valid JSON"),
        (b"[1,2]", "JSON object"),
        (b'{"device_id":"d1"}', "integer 'v'"),
        (b'{"v":true,"device_id":"d1"}', "integer 'v'"),
        (b'{"v":1,"device_id":"d1","online":"maybe"}', "online"),
        (b'{"v":1,"device_id":"bad/id","online":true}', "device_id"),
        (b"\xff\xfe", "not valid JSON"),
    ],
)
def test_bad_state_payloads_name_the_problem(payload, match):
    with pytest.raises(SchemaError, match=match):
        decode("state", payload)


def test_oversize_is_refused_before_parsing():
    with pytest.raises(PayloadTooLarge):
        decode("state", b" " * (MAX_PAYLOAD["state"] + 1))


def test_assignment_bounds():
    with pytest.raises(SchemaError, match="sha256"):
        decode("desired", assignment().to_bytes().replace(SHA.encode(), b"zz" * 32))
    raw = json.loads(assignment().to_bytes())
    raw["length"] = 0
    with pytest.raises(SchemaError, match="length"):
        decode("desired", json.dumps(raw).encode())


def test_fetch_ranges_validated():
    ok = FetchRequest(device_id="d1", sha256=SHA, ranges=[(0, 4)])
    assert decode("fetch", ok.to_bytes()).ranges == [(0, 4)]
    raw = json.loads(ok.to_bytes())
    raw["ranges"] = [[5, 5]]
    with pytest.raises(SchemaError, match="empty"):
        decode("fetch", json.dumps(raw).encode())


def test_lwt_state_is_minimal_and_telemetry_gpu_absent():
    lwt = StateMessage(device_id="d1", online=False)
    assert json.loads(lwt.to_bytes()) == {
        "v": 1,
        "device_id": "d1",
        "online": False,
        "profile_details": {},
        "slots": [],
        "tags": {},
    }
    batch = TelemetryBatch(device_id="d1", samples=[{"ts": 1.0, "seq": 0}])
    assert "gpu" not in json.loads(batch.to_bytes())["samples"][0]
