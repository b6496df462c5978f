"""The topic map: every kind builds and parses back, ids cannot escape their subtree, and the ACL."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pulse.protocol import topics
from pulse.protocol.errors import Code, TopicError
from pulse.protocol.topics import Topic, TopicKind, build, device_may_publish, device_may_subscribe, device_subtree, parse

pytestmark = pytest.mark.unit

D = "boiler-7"

EVERY_KIND = [
    (TopicKind.TELEMETRY, None, "pulse/boiler-7/telemetry", True),
    (TopicKind.EVENT, None, "pulse/boiler-7/event", True),
    (TopicKind.HEARTBEAT, None, "pulse/boiler-7/heartbeat", True),
    (TopicKind.TWIN_REPORTED, None, "pulse/boiler-7/twin/reported", True),
    (TopicKind.TWIN_GET, None, "pulse/boiler-7/twin/get", True),
    (TopicKind.TWIN_DESIRED, None, "pulse/boiler-7/twin/desired", False),
    (TopicKind.TWIN_DOCUMENT, None, "pulse/boiler-7/twin/document", False),
    (TopicKind.COMMAND, "c-17", "pulse/boiler-7/cmd/c-17", False),
    (TopicKind.COMMAND_ACK, "c-17", "pulse/boiler-7/cmd/c-17/ack", True),
]


def test_the_table_covers_every_kind() -> None:
    assert {k for k, *_ in EVERY_KIND} == set(TopicKind)


@pytest.mark.parametrize(("kind", "command_id", "text", "uplink"), EVERY_KIND, ids=[k.name for k, *_ in EVERY_KIND])
def test_every_kind_builds_and_parses_back(kind: TopicKind, command_id: str | None, text: str, uplink: bool) -> None:
    assert build(D, kind, command_id) == text
    topic = parse(text)
    assert topic == Topic(D, kind, command_id)
    assert str(topic) == text
    assert topic.is_uplink is uplink


BAD_IDS = [
    "",
    "+",
    "#",
    "a+b",
    "a#",
    "a/b",
    "/",
    "a\x00b",
    "\x00",
    "$SYS",
    "$share",
    "d" * 129,
    " a",
    "a b",
    "-a",
    "_a",
    ".",
    "ü",
    "a\n",
]


@pytest.mark.parametrize("device_id", BAD_IDS, ids=repr)
def test_ids_that_could_escape_the_subtree_are_refused(device_id: str) -> None:
    assert not topics.valid_device_id(device_id)
    for kind, command_id, _, _ in EVERY_KIND:
        with pytest.raises(TopicError) as info:
            build(device_id, kind, command_id)
        assert info.value.code is Code.TOPIC_BAD_DEVICE_ID
    with pytest.raises(TopicError) as info:
        device_subtree(device_id)
    assert info.value.code is Code.TOPIC_BAD_DEVICE_ID


@pytest.mark.parametrize("device_id", ["a", "0", "d" * 128, "A-1_b.c:d", "gw:site-3.boiler_7"])
def test_valid_ids(device_id: str) -> None:
    assert parse(build(device_id, TopicKind.TELEMETRY)).device_id == device_id
    assert device_subtree(device_id) == f"pulse/{device_id}/#"


def test_a_non_string_id_is_refused_with_a_code() -> None:
    with pytest.raises(TopicError) as info:
        build(7, TopicKind.TELEMETRY)  # type: ignore[arg-type]
    assert info.value.code is Code.TOPIC_BAD_DEVICE_ID


@pytest.mark.parametrize("command_id", [None, "", "a/b", "+", "#", "c" * 65, "$x"], ids=repr)
def test_bad_command_ids_are_refused(command_id: str | None) -> None:
    for kind in (TopicKind.COMMAND, TopicKind.COMMAND_ACK):
        with pytest.raises(TopicError) as info:
            build(D, kind, command_id)
        assert info.value.code is Code.TOPIC_UNKNOWN


UNPARSEABLE = [
    ("", Code.TOPIC_UNKNOWN),
    ("pulse", Code.TOPIC_UNKNOWN),
    ("pulse/boiler-7", Code.TOPIC_UNKNOWN),
    ("pulse/boiler-7/", Code.TOPIC_UNKNOWN),
    ("other/boiler-7/telemetry", Code.TOPIC_UNKNOWN),
    ("/pulse/boiler-7/telemetry", Code.TOPIC_UNKNOWN),
    ("Pulse/boiler-7/telemetry", Code.TOPIC_UNKNOWN),
    ("pulse/boiler-7/temperature", Code.TOPIC_UNKNOWN),
    ("pulse/boiler-7/telemetry/extra", Code.TOPIC_UNKNOWN),
    ("pulse/boiler-7/twin", Code.TOPIC_UNKNOWN),
    ("pulse/boiler-7/twin/other", Code.TOPIC_UNKNOWN),
    ("pulse/boiler-7/cmd", Code.TOPIC_UNKNOWN),
    ("pulse/boiler-7/cmd/c1/nack", Code.TOPIC_UNKNOWN),
    ("pulse/boiler-7/cmd/c1/ack/x", Code.TOPIC_UNKNOWN),
    ("pulse/boiler-7/cmd/+", Code.TOPIC_UNKNOWN),
    ("pulse/boiler-7/cmd/+/ack", Code.TOPIC_UNKNOWN),
    ("pulse/boiler-7/+", Code.TOPIC_UNKNOWN),
    ("pulse/boiler-7/#", Code.TOPIC_UNKNOWN),
    ("pulse/+/telemetry", Code.TOPIC_BAD_DEVICE_ID),
    ("pulse/#/telemetry", Code.TOPIC_BAD_DEVICE_ID),
    ("pulse//telemetry", Code.TOPIC_BAD_DEVICE_ID),
    ("pulse/$SYS/telemetry", Code.TOPIC_BAD_DEVICE_ID),
    ("pulse/a\x00/telemetry", Code.TOPIC_BAD_DEVICE_ID),
    ("pulse/" + "d" * 129 + "/telemetry", Code.TOPIC_BAD_DEVICE_ID),
]


@pytest.mark.parametrize(("text", "code"), UNPARSEABLE, ids=[repr(t)[:40] for t, _ in UNPARSEABLE])
def test_topics_outside_the_map_are_refused(text: str, code: Code) -> None:
    with pytest.raises(TopicError) as info:
        parse(text)
    assert info.value.code is code


PUBLISH = [
    ("pulse/boiler-7/telemetry", True),
    ("pulse/boiler-7/event", True),
    ("pulse/boiler-7/heartbeat", True),
    ("pulse/boiler-7/twin/reported", True),
    ("pulse/boiler-7/twin/get", True),
    ("pulse/boiler-7/cmd/c1/ack", True),
    # downlink topics are the gateway's to publish
    ("pulse/boiler-7/twin/desired", False),
    ("pulse/boiler-7/twin/document", False),
    ("pulse/boiler-7/cmd/c1", False),
    # another device, or a wildcard standing in for one
    ("pulse/boiler-8/telemetry", False),
    ("pulse/boiler-70/telemetry", False),
    ("pulse/boiler-/telemetry", False),
    ("pulse/+/telemetry", False),
    ("pulse/#", False),
    ("#", False),
    ("pulse/boiler-7/+", False),
    ("pulse/boiler-7/#", False),
    ("pulse/boiler-7/cmd/+/ack", False),
    ("$SYS/broker/load", False),
    ("pulse/boiler-7/telemetry/x", False),
    ("", False),
]


@pytest.mark.parametrize(("topic", "allowed"), PUBLISH, ids=[t or "<empty>" for t, _ in PUBLISH])
def test_a_device_may_publish_only_uplink_topics_under_its_own_id(topic: str, allowed: bool) -> None:
    assert device_may_publish(D, topic) is allowed


SUBSCRIBE = [
    ("pulse/boiler-7/#", True),
    ("pulse/boiler-7/twin/desired", True),
    ("pulse/boiler-7/twin/document", True),
    ("pulse/boiler-7/cmd/+", True),
    ("pulse/boiler-7/cmd/c1", True),
    ("pulse/boiler-7/+/desired", True),
    ("pulse/boiler-7/twin/#", True),
    # wildcards at or above the device level reach other devices
    ("pulse/+/telemetry", False),
    ("pulse/+/#", False),
    ("pulse/#", False),
    ("#", False),
    ("+/boiler-7/#", False),
    ("+/+/#", False),
    ("pulse/boiler-8/#", False),
    ("pulse/boiler-7+/#", False),
    ("pulse/boiler-7#", False),
    ("$SYS/#", False),
    ("$share/g/pulse/boiler-7/#", False),
    ("pulse/boiler-7", False),
    # malformed filters
    ("pulse/boiler-7/#/x", False),
    ("pulse/boiler-7/twin#", False),
    ("pulse/boiler-7/a+", False),
    ("pulse/boiler-7/x\x00", False),
    ("", False),
]


@pytest.mark.parametrize(("topic_filter", "allowed"), SUBSCRIBE, ids=[repr(t) for t, _ in SUBSCRIBE])
def test_a_device_may_subscribe_only_inside_its_own_subtree(topic_filter: str, allowed: bool) -> None:
    assert device_may_subscribe(D, topic_filter) is allowed


@pytest.mark.parametrize("device_id", ["+", "#", "", "a/b"], ids=repr)
def test_a_device_with_an_invalid_id_may_do_nothing(device_id: str) -> None:
    assert not device_may_subscribe(device_id, f"pulse/{device_id}/#")
    assert not device_may_publish(device_id, f"pulse/{device_id}/telemetry")


# ------------------------------------------------------------------------------------------------
# properties

valid_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}", fullmatch=True)
command_ids = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.:\-]{0,63}", fullmatch=True)


@settings(max_examples=300)
@given(device_id=valid_ids, kind=st.sampled_from(TopicKind), command_id=command_ids)
def test_any_valid_id_round_trips_for_every_kind(device_id: str, kind: TopicKind, command_id: str) -> None:
    cmd = command_id if kind in (TopicKind.COMMAND, TopicKind.COMMAND_ACK) else None
    text = build(device_id, kind, cmd)
    assert parse(text) == Topic(device_id, kind, cmd)
    assert device_may_publish(device_id, text) is (kind in topics.UPLINK_KINDS)
    assert device_may_subscribe(device_id, text)


@settings(max_examples=500)
@given(device_id=st.text(max_size=140))
def test_an_id_either_is_safe_or_is_refused(device_id: str) -> None:
    try:
        text = build(device_id, TopicKind.TELEMETRY)
    except TopicError as exc:
        assert exc.code is Code.TOPIC_BAD_DEVICE_ID
        return
    assert not set(device_id) & {"+", "#", "/", "\x00"}
    assert not device_id.startswith("$") and 0 < len(device_id) <= 128
    assert text.count("/") == 2


_filter_levels = st.lists(st.sampled_from(["pulse", D, "boiler-8", "+", "#", "telemetry", "cmd", "", "x#", "$SYS"]), max_size=5)


@settings(max_examples=500)
@given(levels=_filter_levels)
def test_an_allowed_subscription_never_matches_outside_the_subtree(levels: list[str]) -> None:
    topic_filter = "/".join(levels)
    if device_may_subscribe(D, topic_filter):
        # the first two levels are literal, so every topic it matches starts with pulse/boiler-7/
        assert levels[:2] == ["pulse", D] and len(levels) >= 3


@settings(max_examples=500)
@given(text=st.text(alphabet="pulseboir-78/+#cmdtwackx\x00", max_size=40))
def test_a_publish_allowed_by_the_acl_is_a_parsed_uplink_of_that_device(text: str) -> None:
    if device_may_publish(D, text):
        topic = parse(text)
        assert topic.device_id == D and topic.is_uplink
