"""Rules: the one rule model the gateway and the cloud both evaluate, and its pure evaluation.

Nothing here waits, reads a clock or touches storage. A runner (edge or cloud) keeps one
``RuleState`` per (rule, device), and for every message calls::

    state, actions = evaluate(rule, state, reading, now)     # now: the evaluator's clock, Unix ms

and, periodically, ``sweep(rule, state, now)`` (heartbeat silence, the end of flapping). It persists
``state.to_dict()`` and performs the actions, which are plain data: ``OpenAlert``, ``CloseAlert``,
``ConditionCleared``, ``FlappingStarted``, ``FlappingEnded``, ``UpdateDeviceState``. Alert actions
carry the fingerprint (tenant, device, rule), the severity and an ``Explanation`` (the values seen,
the window, the threshold, the operator, the rule version and one sentence a person can read).

Rule kinds:

- threshold: ``metric operator threshold`` (GT GTE LT LTE EQ NEQ; booleans with EQ/NEQ only),
  optionally held for ``window_s`` seconds before firing, optionally cleared only past a separate
  ``clear_threshold`` (hysteresis).
- heartbeat: a device is ONLINE, STALE after ``stale_after`` x its expected interval of silence,
  OFFLINE after ``offline_after`` x; the alert opens at ``alert_on`` (default OFFLINE).

Rules reach this module as untrusted JSON (the API, the downlink): ``parse_rule`` refuses bad ones
with a ``RuleError`` whose code names the field. docs/protocol.md ("Rules") has worked scenarios.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import NoReturn, Protocol, TypeAlias, TypeGuard

from pulse.protocol.envelope import JsonValue, MetricValue
from pulse.protocol.errors import Code, RuleError
from pulse.protocol.topics import valid_device_id

STATE_SCHEMA = 1
MAX_SECONDS = 7 * 24 * 3600
MAX_NAME_LEN = 200
_METRIC_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-]{0,63}")  # the envelope's metric and tag names


class RuleKind(StrEnum):
    THRESHOLD = "threshold"
    HEARTBEAT = "heartbeat"


class Operator(StrEnum):
    GT = "GT"
    GTE = "GTE"
    LT = "LT"
    LTE = "LTE"
    EQ = "EQ"
    NEQ = "NEQ"


class Severity(StrEnum):
    CRITICAL = "critical"
    MAJOR = "major"
    MINOR = "minor"
    WARNING = "warning"
    INFO = "info"


class DeviceStatus(StrEnum):
    ONLINE = "online"
    STALE = "stale"
    OFFLINE = "offline"


_COMPARE: dict[Operator, Callable[[MetricValue, MetricValue], bool]] = {
    Operator.GT: operator.gt,
    Operator.GTE: operator.ge,
    Operator.LT: operator.lt,
    Operator.LTE: operator.le,
    Operator.EQ: operator.eq,
    Operator.NEQ: operator.ne,
}
_WORDS = {
    Operator.GT: "above",
    Operator.GTE: "at or above",
    Operator.LT: "below",
    Operator.LTE: "at or below",
    Operator.EQ: "equal to",
    Operator.NEQ: "not equal to",
}
_RANK = {DeviceStatus.ONLINE: 0, DeviceStatus.STALE: 1, DeviceStatus.OFFLINE: 2}


# --- the model ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Scope:
    """Which devices a rule watches. Every non-empty part must match; an empty scope is every device."""

    devices: frozenset[str] = frozenset()
    tags: Mapping[str, str] = field(default_factory=dict)
    sites: frozenset[str] = frozenset()


@dataclass(frozen=True, slots=True)
class Threshold:
    metric: str
    operator: Operator
    threshold: MetricValue
    clear_threshold: float | None = None  # hysteresis: while firing, stays active while `value operator clear_threshold`
    window_s: float = 0.0  # the condition must hold this long (on every reading) before firing


@dataclass(frozen=True, slots=True)
class Heartbeat:
    interval_s: float  # how often the device is expected to be heard from
    stale_after: float = 1.5  # x interval of silence -> STALE
    offline_after: float = 3.0  # x interval of silence -> OFFLINE
    alert_on: DeviceStatus = DeviceStatus.OFFLINE
    intervals: Mapping[str, float] = field(default_factory=dict)  # per-device expected intervals

    def interval_for(self, device_id: str) -> float:
        return self.intervals.get(device_id, self.interval_s)


@dataclass(frozen=True, slots=True)
class Flapping:
    """After ``cycles`` open/clear cycles within ``period_s``, the next opening starts FLAPPING."""

    cycles: int = 3
    period_s: float = 600.0


@dataclass(frozen=True, slots=True)
class Rule:
    id: str
    tenant: str
    version: int
    severity: Severity
    condition: Threshold | Heartbeat
    name: str = ""
    scope: Scope = Scope()
    enabled: bool = True
    auto_close: bool = True  # close the alert when the condition clears; otherwise a person closes it
    flapping: Flapping | None = Flapping()

    @property
    def kind(self) -> RuleKind:
        return RuleKind.HEARTBEAT if isinstance(self.condition, Heartbeat) else RuleKind.THRESHOLD


@dataclass(frozen=True, slots=True)
class Device:
    device_id: str
    tags: Mapping[str, str] = field(default_factory=dict)
    site: str | None = None


def applies_to(rule: Rule, device: Device) -> bool:
    """True when the rule's scope covers the device (device ids, tags and sites all match)."""
    scope = rule.scope
    return (
        (not scope.devices or device.device_id in scope.devices)
        and (not scope.sites or device.site in scope.sites)
        and all(device.tags.get(name) == value for name, value in scope.tags.items())
    )


class Reading(Protocol):
    """What evaluation needs from a message; ``envelope.Envelope`` is one."""

    @property
    def device_id(self) -> str: ...

    @property
    def metrics(self) -> Mapping[str, MetricValue]: ...


# --- actions -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """One alert per fingerprint: at most one is open at any time."""

    tenant: str
    device: str
    rule: str

    def __str__(self) -> str:
        return f"{self.tenant}/{self.device}/{self.rule}"


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why an action happened: the facts, and ``text``, one sentence for people."""

    text: str
    rule_id: str
    rule_version: int
    device_id: str
    at_ms: int
    metric: str | None = None
    operator: Operator | None = None
    threshold: MetricValue | None = None
    clear_threshold: float | None = None
    window_s: float | None = None
    since_ms: int | None = None  # when the condition started holding
    readings: int = 0  # readings seen while it held
    first: MetricValue | None = None
    last: MetricValue | None = None
    low: float | None = None
    high: float | None = None
    status: DeviceStatus | None = None
    last_seen_ms: int | None = None
    interval_s: float | None = None

    def to_dict(self) -> dict[str, JsonValue]:
        """JSON-able, for alert rows and notification templates (absent facts are left out)."""
        doc: dict[str, JsonValue] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None:
                doc[f.name] = str(value) if isinstance(value, StrEnum) else value
        return doc


@dataclass(frozen=True, slots=True)
class OpenAlert:
    """Open the alert for this fingerprint (or merge into the one that is open)."""

    fingerprint: Fingerprint
    severity: Severity
    explanation: Explanation


@dataclass(frozen=True, slots=True)
class CloseAlert:
    """The condition cleared and the rule closes automatically."""

    fingerprint: Fingerprint
    severity: Severity
    explanation: Explanation


@dataclass(frozen=True, slots=True)
class ConditionCleared:
    """The condition cleared; the rule does not auto-close, so the alert waits for a person."""

    fingerprint: Fingerprint
    severity: Severity
    explanation: Explanation


@dataclass(frozen=True, slots=True)
class FlappingStarted:
    """Open the alert in the FLAPPING state: no opens or closes are emitted until it is stable."""

    fingerprint: Fingerprint
    severity: Severity
    explanation: Explanation


@dataclass(frozen=True, slots=True)
class FlappingEnded:
    """Stable for the flapping period: back to OPEN (a ``CloseAlert`` follows if the condition is clear)."""

    fingerprint: Fingerprint
    severity: Severity
    explanation: Explanation


@dataclass(frozen=True, slots=True)
class UpdateDeviceState:
    tenant: str
    device: str
    status: DeviceStatus
    explanation: Explanation


Action: TypeAlias = OpenAlert | CloseAlert | ConditionCleared | FlappingStarted | FlappingEnded | UpdateDeviceState
Actions: TypeAlias = tuple[Action, ...]


# --- state -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Track:
    """The readings seen since the condition started holding (bounded: a summary, not a list)."""

    since_ms: int
    last_ms: int
    count: int
    first: MetricValue
    last: MetricValue
    low: float | None
    high: float | None

    @staticmethod
    def start(value: MetricValue, now: int) -> Track:
        number = None if isinstance(value, bool) else value  # ints stay ints, so JSON gives them back alike
        return Track(now, now, 1, value, value, number, number)

    def add(self, value: MetricValue, now: int) -> Track:
        low, high = self.low, self.high
        if not isinstance(value, bool):
            low = value if low is None else min(low, value)
            high = value if high is None else max(high, value)
        return Track(self.since_ms, now, self.count + 1, self.first, value, low, high)


@dataclass(frozen=True, slots=True)
class RuleState:
    """Everything a rule remembers about one device; persisted with ``to_dict`` between evaluations."""

    rule_id: str
    device_id: str
    rule_version: int
    active: bool = False  # the condition is firing (window and hysteresis applied)
    track: Track | None = None  # threshold: the run of readings meeting the condition
    status: DeviceStatus = DeviceStatus.ONLINE  # heartbeat
    last_seen_ms: int | None = None  # heartbeat: evaluator clock when last heard from
    clears: tuple[int, ...] = ()  # when the condition last cleared (flapping detection)
    flapping: bool = False
    last_change_ms: int | None = None  # while flapping: the last time the condition changed

    def to_dict(self) -> dict[str, JsonValue]:
        track = self.track
        return {
            "schema": STATE_SCHEMA,
            "rule_id": self.rule_id,
            "device_id": self.device_id,
            "rule_version": self.rule_version,
            "active": self.active,
            "track": None
            if track is None
            else [track.since_ms, track.last_ms, track.count, track.first, track.last, track.low, track.high],
            "status": str(self.status),
            "last_seen_ms": self.last_seen_ms,
            "clears": list(self.clears),
            "flapping": self.flapping,
            "last_change_ms": self.last_change_ms,
        }

    @staticmethod
    def from_dict(doc: object) -> RuleState:
        """Read what ``to_dict`` wrote (possibly by an older release); refuses anything else."""
        if not isinstance(doc, dict):
            _bad_state("state is a JSON object")
        schema = doc.get("schema")
        if type(schema) is int and schema > STATE_SCHEMA:
            raise RuleError(Code.RULE_STATE_VERSION_UNSUPPORTED, f"this release reads rule state schema {STATE_SCHEMA}")
        if schema != STATE_SCHEMA or set(doc) != _STATE_FIELDS:
            _bad_state(f"state schema {STATE_SCHEMA} has exactly the fields {sorted(_STATE_FIELDS)}")
        rule_id, device_id = doc["rule_id"], doc["device_id"]
        if not isinstance(rule_id, str) or not isinstance(device_id, str):
            _bad_state("rule_id and device_id are strings")
        try:
            status = DeviceStatus(doc["status"])
        except ValueError:
            _bad_state("status is online, stale or offline")
        clears = doc["clears"]
        if not isinstance(clears, list):
            _bad_state("clears is a list of times")
        return RuleState(
            rule_id=rule_id,
            device_id=device_id,
            rule_version=_state_int(doc["rule_version"]),
            active=_state_bool(doc["active"]),
            track=_state_track(doc["track"]),
            status=status,
            last_seen_ms=_state_int_or_none(doc["last_seen_ms"]),
            clears=tuple(_state_int(c) for c in clears),
            flapping=_state_bool(doc["flapping"]),
            last_change_ms=_state_int_or_none(doc["last_change_ms"]),
        )


_STATE_FIELDS = frozenset(RuleState(rule_id="", device_id="", rule_version=1).to_dict())


def _bad_state(message: str) -> NoReturn:
    raise RuleError(Code.RULE_BAD_STATE, message)


def _state_int(value: object) -> int:
    return value if type(value) is int else _bad_state("times, counts and versions are integers")


def _state_int_or_none(value: object) -> int | None:
    return None if value is None else _state_int(value)


def _state_bool(value: object) -> bool:
    return value if type(value) is bool else _bad_state("flags are true or false")


def _state_value(value: object) -> MetricValue:
    return value if isinstance(value, int | float) else _bad_state("values are numbers or booleans")


def _state_number_or_none(value: object) -> float | None:
    if value is None or (isinstance(value, int | float) and not isinstance(value, bool)):
        return value
    _bad_state("low and high are numbers or null")


def _state_track(raw: object) -> Track | None:
    if raw is None:
        return None
    if not isinstance(raw, list) or len(raw) != 7:
        _bad_state("track is null or [since_ms, last_ms, count, first, last, low, high]")
    since, last_ms, count, first, last, low, high = raw
    return Track(
        _state_int(since),
        _state_int(last_ms),
        _state_int(count),
        _state_value(first),
        _state_value(last),
        _state_number_or_none(low),
        _state_number_or_none(high),
    )


def new_state(rule: Rule, device_id: str, now: int) -> RuleState:
    """The state of a (rule, device) pair nothing is known about yet. For a heartbeat rule, monitoring
    starts now: a device never heard from goes STALE and OFFLINE on the same schedule as a silent one."""
    last_seen = now if isinstance(rule.condition, Heartbeat) else None
    return RuleState(rule_id=rule.id, device_id=device_id, rule_version=rule.version, last_seen_ms=last_seen)


# --- evaluation --------------------------------------------------------------------------------


def evaluate(rule: Rule, state: RuleState | None, reading: Reading, now: int) -> tuple[RuleState, Actions]:
    """One message from ``reading.device_id`` (already known to be in the rule's scope), at ``now`` ms.

    A threshold rule ignores a message without its metric, or whose value is of the other kind
    (number vs boolean): the state is left as it was. A heartbeat rule counts every message."""
    state = _prepared(rule, state, reading.device_id, now)
    if not rule.enabled:
        return state, ()
    state, actions = _settle_flapping(rule, state, now)
    cond = rule.condition
    if isinstance(cond, Heartbeat):
        state, more = _heartbeat(rule, cond, state, now, heard=True)
        return state, actions + more
    value = reading.metrics.get(cond.metric)
    if value is None or isinstance(value, bool) is not isinstance(cond.threshold, bool):
        return state, actions
    state, more = _threshold(rule, cond, state, value, now)
    return state, actions + more


def sweep(rule: Rule, state: RuleState, now: int) -> tuple[RuleState, Actions]:
    """Time passing without messages: heartbeat silence (STALE, OFFLINE) and the end of flapping."""
    state = _prepared(rule, state, state.device_id, now)
    if not rule.enabled:
        return state, ()
    state, actions = _settle_flapping(rule, state, now)
    cond = rule.condition
    if isinstance(cond, Heartbeat):
        state, more = _heartbeat(rule, cond, state, now, heard=False)
        actions += more
    return state, actions


def _prepared(rule: Rule, state: RuleState | None, device_id: str, now: int) -> RuleState:
    if state is None:
        return new_state(rule, device_id, now)
    if state.rule_id != rule.id or state.device_id != device_id:
        raise RuleError(
            Code.RULE_STATE_MISMATCH,
            "this state belongs to another rule or device",
            rule_id=rule.id,
            device_id=device_id,
            state_rule_id=state.rule_id,
            state_device_id=state.device_id,
        )
    if state.rule_version != rule.version:  # an edited rule starts its window again; open alerts stay open
        return replace(state, rule_version=rule.version, track=None)
    return state


def _threshold(rule: Rule, cond: Threshold, state: RuleState, value: MetricValue, now: int) -> tuple[RuleState, Actions]:
    bound = cond.clear_threshold if state.active and cond.clear_threshold is not None else cond.threshold
    if not _COMPARE[cond.operator](value, bound):
        state = replace(state, track=None)  # a window in progress starts again; an active alert clears
        if not state.active:
            return state, ()
        return _transition(rule, state, False, now, _cleared(rule, cond, state.device_id, value, now))
    track = Track.start(value, now) if state.track is None else state.track.add(value, now)
    state = replace(state, track=track)
    if state.active or now - track.since_ms < cond.window_s * 1000:
        return state, ()
    return _transition(rule, state, True, now, _fired(rule, cond, state.device_id, track, now))


def _status(cond: Heartbeat, device_id: str, silent_ms: int) -> DeviceStatus:
    interval_ms = cond.interval_for(device_id) * 1000
    if silent_ms >= cond.offline_after * interval_ms:
        return DeviceStatus.OFFLINE
    if silent_ms >= cond.stale_after * interval_ms:
        return DeviceStatus.STALE
    return DeviceStatus.ONLINE


def _heartbeat(rule: Rule, cond: Heartbeat, state: RuleState, now: int, *, heard: bool) -> tuple[RuleState, Actions]:
    before = now if state.last_seen_ms is None else state.last_seen_ms
    last_seen = now if heard else before
    state = replace(state, last_seen_ms=last_seen)
    status = _status(cond, state.device_id, now - last_seen)
    actions: Actions = ()
    expl = _silence(rule, cond, state.device_id, status, before, now)
    if status is not state.status:
        state = replace(state, status=status)
        actions = (UpdateDeviceState(rule.tenant, state.device_id, status, expl),)
    alarmed = _RANK[status] >= _RANK[cond.alert_on]
    if alarmed is not state.active:
        state, more = _transition(rule, state, alarmed, now, expl)
        actions += more
    return state, actions


# --- the alert layer: one open alert per fingerprint, flapping ------------------------------------


def _fingerprint(rule: Rule, state: RuleState) -> Fingerprint:
    return Fingerprint(rule.tenant, state.device_id, rule.id)


def _transition(rule: Rule, state: RuleState, active: bool, now: int, expl: Explanation) -> tuple[RuleState, Actions]:
    fp, flap = _fingerprint(rule, state), rule.flapping
    clears = () if flap is None else tuple(t for t in state.clears if now - t < flap.period_s * 1000)
    if not active:
        clears = () if flap is None else (*clears, now)[-flap.cycles :]
    state = replace(state, active=active, clears=clears)
    if state.flapping:
        return replace(state, last_change_ms=now), ()
    if not active:
        return state, (_closing(rule, fp, expl),)
    if flap is not None and len(clears) >= flap.cycles:
        text = (
            f"{expl.text} The alert has opened and cleared {len(clears)} times within {_secs(flap.period_s)}: "
            f"it stays open as flapping until the condition is stable for {_secs(flap.period_s)}."
        )
        return replace(state, flapping=True, last_change_ms=now), (FlappingStarted(fp, rule.severity, replace(expl, text=text)),)
    return state, (OpenAlert(fp, rule.severity, expl),)


def _closing(rule: Rule, fp: Fingerprint, expl: Explanation) -> Action:
    if rule.auto_close:
        return CloseAlert(fp, rule.severity, expl)
    return ConditionCleared(fp, rule.severity, replace(expl, text=f"{expl.text} The alert stays open until someone closes it."))


def _settle_flapping(rule: Rule, state: RuleState, now: int) -> tuple[RuleState, Actions]:
    """End flapping once the condition has not changed for the flapping period."""
    if not state.flapping:
        return state, ()
    period_s = 0.0 if rule.flapping is None else rule.flapping.period_s
    since = now if state.last_change_ms is None else state.last_change_ms
    if now - since < period_s * 1000:
        return state, ()
    state = replace(state, flapping=False, last_change_ms=None, clears=())
    fp = _fingerprint(rule, state)
    now_is = "active: the alert stays open" if state.active else "clear"
    expl = Explanation(
        text=f"{state.device_id}: no longer flapping, the condition has not changed for {_secs((now - since) / 1000)} "
        f"and is {now_is}; {_ref(rule)}.",
        rule_id=rule.id,
        rule_version=rule.version,
        device_id=state.device_id,
        at_ms=now,
        since_ms=since,
    )
    actions: Actions = (FlappingEnded(fp, rule.severity, expl),)
    if not state.active:
        actions += (_closing(rule, fp, expl),)
    return state, actions


# --- explanations --------------------------------------------------------------------------------


def _fmt(value: MetricValue | None) -> str:
    return str(value).lower() if isinstance(value, bool) or value is None else f"{value}"


def _ref(rule: Rule) -> str:
    return f"rule {rule.id} v{rule.version}" + (f' "{rule.name}"' if rule.name else "")


def _secs(seconds: float) -> str:
    return f"{seconds:g} s"


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _fired(rule: Rule, cond: Threshold, device_id: str, track: Track, now: int) -> Explanation:
    words = _WORDS[cond.operator]
    if track.count == 1:
        text = f"{device_id}: {cond.metric} is {_fmt(track.last)}, {words} {_fmt(cond.threshold)}"
    else:
        spread = "" if track.low is None else f", {_fmt(track.low)} to {_fmt(track.high)}"
        text = (
            f"{device_id}: {cond.metric} has been {words} {_fmt(cond.threshold)} for {_secs((now - track.since_ms) / 1000)} "
            f"(window {_secs(cond.window_s)}): {track.count} readings since {_when(track.since_ms)}{spread}, "
            f"last {_fmt(track.last)}"
        )
    return Explanation(
        text=f"{text}; {_ref(rule)}, {rule.severity}.",
        rule_id=rule.id,
        rule_version=rule.version,
        device_id=device_id,
        at_ms=now,
        metric=cond.metric,
        operator=cond.operator,
        threshold=cond.threshold,
        clear_threshold=cond.clear_threshold,
        window_s=cond.window_s,
        since_ms=track.since_ms,
        readings=track.count,
        first=track.first,
        last=track.last,
        low=track.low,
        high=track.high,
    )


def _cleared(rule: Rule, cond: Threshold, device_id: str, value: MetricValue, now: int) -> Explanation:
    words = _WORDS[cond.operator]
    if cond.clear_threshold is None:
        why = f"no longer {words} {_fmt(cond.threshold)}"
    else:
        why = f"no longer {words} the clear threshold {_fmt(cond.clear_threshold)}"
    return Explanation(
        text=f"{device_id}: {cond.metric} is {_fmt(value)}, {why}; {_ref(rule)}.",
        rule_id=rule.id,
        rule_version=rule.version,
        device_id=device_id,
        at_ms=now,
        metric=cond.metric,
        operator=cond.operator,
        threshold=cond.threshold,
        clear_threshold=cond.clear_threshold,
        window_s=cond.window_s,
        readings=1,
        last=value,
    )


def _silence(rule: Rule, cond: Heartbeat, device_id: str, status: DeviceStatus, last_seen: int, now: int) -> Explanation:
    """``last_seen``: when the device was heard from before ``now`` (for ONLINE: the silence that ended)."""
    interval = cond.interval_for(device_id)
    if status is DeviceStatus.ONLINE:
        text = f"{device_id} is online: heard from at {_when(now)} after {_secs((now - last_seen) / 1000)} of silence"
    else:
        factor = cond.offline_after if status is DeviceStatus.OFFLINE else cond.stale_after
        text = (
            f"{device_id} is {status}: not heard from for {_secs((now - last_seen) / 1000)} since {_when(last_seen)} "
            f"(expected every {_secs(interval)}, {status} after {_secs(factor * interval)})"
        )
    return Explanation(
        text=f"{text}; {_ref(rule)}.",
        rule_id=rule.id,
        rule_version=rule.version,
        device_id=device_id,
        at_ms=now,
        status=status,
        last_seen_ms=last_seen,
        interval_s=interval,
    )


# --- the wire form -------------------------------------------------------------------------------

_COMMON = frozenset({"id", "name", "version", "kind", "severity", "enabled", "auto_close", "scope", "flapping"})
FIELDS: Mapping[RuleKind, frozenset[str]] = {  # what a rule of each kind may hold
    RuleKind.THRESHOLD: _COMMON | {"metric", "operator", "threshold", "clear_threshold", "window_s"},
    RuleKind.HEARTBEAT: _COMMON | {"interval_s", "stale_after", "offline_after", "alert_on", "intervals"},
}


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def parse_rule(doc: object, *, tenant: str) -> Rule:
    """Validate one rule as JSON (an API body, a downlink entry). ``tenant`` comes from the verified
    caller, never from the document. Raises ``RuleError`` with a code naming the field."""
    if not isinstance(doc, dict):
        raise RuleError(Code.RULE_NOT_OBJECT, "a rule is a JSON object")
    rule_id = doc.get("id")
    if not isinstance(rule_id, str) or not valid_device_id(rule_id):
        raise RuleError(Code.RULE_BAD_ID, "id is 1-128 characters of letters, digits, '_', '-', '.', ':'")

    def fail(code: Code, message: str) -> NoReturn:
        raise RuleError(code, message, rule_id=rule_id)

    try:
        kind = RuleKind(str(doc.get("kind", "threshold")))
    except ValueError:
        fail(Code.RULE_BAD_KIND, "kind is threshold or heartbeat")
    if unknown := sorted(str(k) for k in set(doc) - FIELDS[kind]):
        fail(
            Code.RULE_UNKNOWN_FIELD,
            f"a {kind} rule has no field(s) {', '.join(unknown)}; it has {', '.join(sorted(FIELDS[kind]))}",
        )
    name = doc.get("name", "")
    if not isinstance(name, str) or len(name) > MAX_NAME_LEN:
        fail(Code.RULE_BAD_NAME, f"name is a string of at most {MAX_NAME_LEN} characters")
    version = doc.get("version", 1)
    if type(version) is not int or version < 1:
        fail(Code.RULE_BAD_VERSION, "version is an integer from 1")
    try:
        severity = Severity(str(doc.get("severity")))
    except ValueError:
        fail(Code.RULE_BAD_SEVERITY, "severity is one of " + ", ".join(Severity))
    enabled, auto_close = doc.get("enabled", True), doc.get("auto_close", True)
    if type(enabled) is not bool or type(auto_close) is not bool:
        fail(Code.RULE_BAD_FLAG, "enabled and auto_close are true or false")
    condition = _threshold_of(doc, fail) if kind is RuleKind.THRESHOLD else _heartbeat_of(doc, fail)
    return Rule(
        id=rule_id,
        tenant=tenant,
        version=version,
        severity=severity,
        condition=condition,
        name=name,
        scope=_scope_of(doc.get("scope"), fail),
        enabled=enabled,
        auto_close=auto_close,
        flapping=_flapping_of(doc.get("flapping", {}), fail),
    )


_Fail: TypeAlias = Callable[[Code, str], NoReturn]


def _threshold_of(doc: dict[object, object], fail: _Fail) -> Threshold:
    metric = doc.get("metric")
    if not isinstance(metric, str) or not _METRIC_RE.fullmatch(metric):
        fail(Code.RULE_BAD_METRIC, "metric is a metric name: 1-64 letters, digits, '_', '.', '-', starting with a letter or '_'")
    try:
        op = Operator(str(doc.get("operator")))
    except ValueError:
        fail(Code.RULE_BAD_OPERATOR, "operator is one of " + ", ".join(Operator))
    threshold = doc.get("threshold")
    if isinstance(threshold, bool):
        if op not in (Operator.EQ, Operator.NEQ):
            fail(Code.RULE_BAD_THRESHOLD, "a true/false threshold works with EQ or NEQ only")
    elif not _is_number(threshold):
        fail(Code.RULE_BAD_THRESHOLD, "threshold is a finite number, or true/false with EQ or NEQ")
    clear = doc.get("clear_threshold")
    if clear is not None:
        if op in (Operator.EQ, Operator.NEQ) or not _is_number(clear):
            fail(Code.RULE_BAD_THRESHOLD, "clear_threshold is a finite number, for GT, GTE, LT or LTE")
        if (clear >= threshold) if op in (Operator.GT, Operator.GTE) else (clear <= threshold):
            side = "below" if op in (Operator.GT, Operator.GTE) else "above"
            fail(Code.RULE_BAD_THRESHOLD, f"clear_threshold must be {side} threshold for {op}: the alert clears past it")
    window = doc.get("window_s", 0)
    if not _is_number(window) or not 0 <= window <= MAX_SECONDS:
        fail(Code.RULE_BAD_WINDOW, f"window_s is seconds, from 0 to {MAX_SECONDS} (7 days)")
    return Threshold(metric, op, threshold, clear, window)


def _heartbeat_of(doc: dict[object, object], fail: _Fail) -> Heartbeat:
    def seconds(value: object) -> float:
        if not _is_number(value) or not 0 < value <= MAX_SECONDS:
            fail(Code.RULE_BAD_HEARTBEAT, f"intervals are seconds, above 0 and at most {MAX_SECONDS} (7 days)")
        return value

    interval = seconds(doc.get("interval_s"))
    stale, offline = doc.get("stale_after", 1.5), doc.get("offline_after", 3.0)
    if not _is_number(stale) or not _is_number(offline) or not 1 <= stale < offline <= 100:
        fail(
            Code.RULE_BAD_HEARTBEAT,
            "stale_after and offline_after are multiples of the interval: 1 <= stale_after < offline_after <= 100",
        )
    alert_on = doc.get("alert_on", "offline")
    if alert_on not in ("stale", "offline"):
        fail(Code.RULE_BAD_HEARTBEAT, "alert_on is stale or offline")
    raw = doc.get("intervals", {})
    if not isinstance(raw, dict) or not all(isinstance(d, str) and valid_device_id(d) for d in raw):
        fail(Code.RULE_BAD_HEARTBEAT, "intervals maps device ids to their expected interval in seconds")
    return Heartbeat(interval, stale, offline, DeviceStatus(str(alert_on)), {d: seconds(s) for d, s in raw.items()})


def _scope_of(raw: object, fail: _Fail) -> Scope:
    if raw is None:
        return Scope()
    if not isinstance(raw, dict) or not set(raw) <= {"devices", "tags", "sites"}:
        fail(Code.RULE_BAD_SCOPE, "scope is an object with devices, tags and sites (each optional)")

    def ids(key: str) -> frozenset[str]:
        value = raw.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) and valid_device_id(v) for v in value):
            fail(Code.RULE_BAD_SCOPE, f"scope.{key} is a list of ids (1-128 letters, digits, '_', '-', '.', ':')")
        return frozenset(value)

    tags = raw.get("tags", {})
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and _METRIC_RE.fullmatch(k) and isinstance(v, str) and len(v) <= 128 for k, v in tags.items()
    ):
        fail(Code.RULE_BAD_SCOPE, "scope.tags maps tag names to values (strings of at most 128 characters)")
    return Scope(devices=ids("devices"), tags=dict(tags), sites=ids("sites"))


def _flapping_of(raw: object, fail: _Fail) -> Flapping | None:
    if raw is None:
        return None
    message = "flapping is null (off) or {cycles: 1-100, period_s: seconds up to 1 day}"
    if not isinstance(raw, dict) or not set(raw) <= {"cycles", "period_s"}:
        fail(Code.RULE_BAD_FLAPPING, message)
    default = Flapping()
    cycles, period = raw.get("cycles", default.cycles), raw.get("period_s", default.period_s)
    if type(cycles) is not int or not 1 <= cycles <= 100 or not _is_number(period) or not 0 < period <= 86400:
        fail(Code.RULE_BAD_FLAPPING, message)
    return Flapping(cycles, period)


def rule_to_dict(rule: Rule) -> dict[str, JsonValue]:
    """The wire form ``parse_rule`` reads (without the tenant: that travels with the credentials)."""
    doc: dict[str, JsonValue] = {
        "id": rule.id,
        "name": rule.name,
        "version": rule.version,
        "kind": str(rule.kind),
        "severity": str(rule.severity),
        "enabled": rule.enabled,
        "auto_close": rule.auto_close,
        "scope": {
            "devices": sorted(rule.scope.devices),
            "tags": dict(rule.scope.tags),
            "sites": sorted(rule.scope.sites),
        },
        "flapping": None if rule.flapping is None else {"cycles": rule.flapping.cycles, "period_s": rule.flapping.period_s},
    }
    cond = rule.condition
    if isinstance(cond, Threshold):
        doc |= {
            "metric": cond.metric,
            "operator": str(cond.operator),
            "threshold": cond.threshold,
            "clear_threshold": cond.clear_threshold,
            "window_s": cond.window_s,
        }
    else:
        doc |= {
            "interval_s": cond.interval_s,
            "stale_after": cond.stale_after,
            "offline_after": cond.offline_after,
            "alert_on": str(cond.alert_on),
            "intervals": dict(cond.intervals),
        }
    return doc
