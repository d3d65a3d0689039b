import pytest

from jetfleet import topics
from jetfleet.errors import TopicError


def test_builders_follow_design_layout():
    assert topics.state("dev-1") == "jetfleet/v1/d/dev-1/state"
    assert topics.desired("dev-1") == "jetfleet/v1/d/dev-1/desired"
    assert topics.artifact_blocks("a" * 64) == f"jetfleet/v1/a/{'a' * 64}/blocks"
    assert topics.tuf("timestamp") == "jetfleet/v1/tuf/timestamp"
    assert topics.subscription("telemetry") == "jetfleet/v1/d/+/telemetry"
    assert topics.subscription("telemetry", shared_group="jetfleet") == (
        "$share/jetfleet/jetfleet/v1/d/+/telemetry"
    )


@pytest.mark.parametrize("bad", ["", "a/b", "dev+1", "dev#", "-lead", "x" * 64, "sp ace"])
def test_device_ids_with_wildcards_or_slashes_are_refused(bad):
    with pytest.raises(TopicError, match="invalid device id"):
        topics.state(bad)


def test_parse_round_trips_every_kind():
    for kind in topics.DeviceTopic:
        parsed = topics.parse(topics.device_topic("d1", kind))
        assert (parsed.scope, parsed.kind, parsed.device_id) == ("d", kind.value, "d1")
    assert topics.parse(topics.artifact_blocks("0" * 64)).sha256 == "0" * 64
    assert topics.parse(topics.tuf("root")).role == "root"


@pytest.mark.parametrize(
    "topic",
    [
        "other/v1/d/x/state",
        "jetfleet/v2/d/x/state",
        "jetfleet/v1/d/x/unknown",
        "jetfleet/v1/d/x+/state",
        "jetfleet/v1/a/nothex/blocks",
        "jetfleet/v1/tuf/mirror",
        "jetfleet/v1/d/x/state/extra",
    ],
)
def test_parse_refuses_foreign_topics(topic):
    with pytest.raises(TopicError):
        topics.parse(topic)
