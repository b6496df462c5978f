"""The topic ACL of every Pulse broker (gateway and cloud): a device publishes and subscribes only
under ``pulse/{its id}/`` (``pulse.protocol.topics``). Pure functions of two strings, cached."""

from __future__ import annotations

import functools

from pulse.protocol import topics
from pulse.protocol.errors import Code, TopicError


@functools.lru_cache(maxsize=16384)
def may_publish(identity: str | None, topic: str) -> bool:
    """ACL for PUBLISH. ``identity`` None is an anonymous client (only when anonymous access is on):
    it may publish any device's uplink topics. Cached: a site has a few topics per device, and the
    answer depends on nothing but the two strings."""
    if identity is None:
        try:
            return topics.parse(topic).is_uplink
        except TopicError:
            return False
    return topics.device_may_publish(identity, topic)


def may_subscribe(identity: str | None, topic_filter: str) -> bool:
    """ACL for SUBSCRIBE: a device only inside ``pulse/{its id}/``; anonymous (when on) anywhere under ``pulse/``."""
    if identity is None:
        return topic_filter == "pulse/#" or topic_filter.startswith("pulse/")
    return topics.device_may_subscribe(identity, topic_filter)


def denial(identity: str | None, topic: str) -> tuple[Code, str]:
    """Why ``may_publish`` said no: the code and sentence a quarantine row carries."""
    try:
        parsed = topics.parse(topic)
    except TopicError as exc:
        return exc.code, exc.message
    if identity is not None and parsed.device_id != identity:
        return Code.TOPIC_NOT_OWN_SUBTREE, f"device {identity} may publish only under pulse/{identity}/"
    return Code.TOPIC_DOWNLINK_ONLY, f"devices do not publish on {parsed.kind} topics"
