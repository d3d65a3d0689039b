from __future__ import annotations

import json

from edge_agent.buffer import Buffer, Forwarder


class Info:
    def __init__(self) -> None:
        self.acked = False

    def is_published(self) -> bool:
        return self.acked


class Broker:
    """Records publishes; PUBACKs only when told."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Info]] = []

    def publish(self, payload: bytes) -> Info:
        info = Info()
        self.sent.append((payload, info))
        return info

    def ack_all(self) -> None:
        for _, info in self.sent:
            info.acked = True


def build(rows: list[bytes], dropped: int) -> bytes:
    return json.dumps({"items": [json.loads(r) for r in rows], "dropped": dropped}).encode()


def test_bounded_oldest_dropped_and_counted(tmp_path):
    buf = Buffer(tmp_path / "outbox.db", {"telemetry": 5})
    dropped = [buf.append("telemetry", json.dumps(i).encode()) for i in range(8)]
    assert dropped == [0, 0, 0, 0, 0, 1, 1, 1]
    assert buf.pending("telemetry") == 5
    assert buf.dropped("telemetry") == 3
    assert [json.loads(p) for _, p in buf.peek("telemetry", 10)] == [3, 4, 5, 6, 7]


def test_survives_restart_in_order(tmp_path):
    buf = Buffer(tmp_path / "outbox.db", {"telemetry": 3})
    for i in range(4):
        buf.append("telemetry", json.dumps(i).encode())
    assert buf.next_seq("telemetry") == 0
    assert buf.next_seq("telemetry") == 1
    buf.close()
    again = Buffer(tmp_path / "outbox.db", {"telemetry": 3})
    assert [json.loads(p) for _, p in again.peek("telemetry", 10)] == [1, 2, 3]
    assert again.pending("telemetry") == 3
    assert again.dropped("telemetry") == 1
    assert again.next_seq("telemetry") == 2


def test_forwarder_deletes_only_after_puback_and_reports_drops_once(tmp_path):
    buf = Buffer(tmp_path / "outbox.db", {"telemetry": 4})
    for i in range(6):
        buf.append("telemetry", json.dumps(i).encode())
    broker = Broker()
    fwd = Forwarder(buf, "telemetry", build, broker.publish, batch=3, max_inflight=2,
                    resend_after_s=10)
    fwd.step(connected=False, now=0)
    assert broker.sent == []
    fwd.step(connected=True, now=0)
    bodies = [json.loads(p) for p, _ in broker.sent]
    assert bodies == [{"items": [2, 3, 4], "dropped": 2}, {"items": [5], "dropped": 0}]
    assert buf.pending("telemetry") == 4  # nothing deleted before PUBACK
    fwd.step(connected=True, now=20)  # no PUBACK in time: sent again, in order
    assert [json.loads(p)["items"] for p, _ in broker.sent[2:]] == [[2, 3, 4], [5]]
    broker.ack_all()
    fwd.step(connected=True, now=21)
    assert buf.pending("telemetry") == 0
    assert buf.dropped("telemetry") == 0
    assert fwd.delivered == 4


def test_corrupt_database_is_moved_aside(tmp_path):
    path = tmp_path / "outbox.db"
    path.write_bytes(b"this is not sqlite" * 100)
    buf = Buffer(path, {"events": 10})
    buf.append("events", b"{}")
    assert buf.pending("events") == 1
    assert (tmp_path / "outbox.db.corrupt").exists()


def test_publish_that_paho_failed_is_sent_again(tmp_path):
    class Failed:
        def is_published(self) -> bool:
            raise RuntimeError("Message publish failed: not connected")

    buf = Buffer(tmp_path / "outbox.db", {"events": 10})
    buf.append("events", b"1")
    sent: list[bytes] = []
    infos = iter([Failed(), Info()])

    def publish(payload: bytes):
        sent.append(payload)
        return next(infos)

    fwd = Forwarder(buf, "events", lambda rows, _d: rows[0], publish, batch=1)
    fwd.step(connected=True, now=0)
    fwd.step(connected=True, now=0.1)
    assert sent == [b"1", b"1"]
    assert buf.pending("events") == 1
