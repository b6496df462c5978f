"""Device twin: desired and reported state, the computed delta, per-leaf metadata and a version.

The semantics are AWS IoT Device Shadow's, so that people who know it know ours. Worked examples of
every rule are in docs/protocol.md ("Device twin"); in short:

- ``apply_update(doc, update, now_ms=, limits=)`` merges ``desired`` and/or ``reported`` partial
  objects into the document: nested objects merge recursively, arrays and scalars replace whole,
  ``null`` deletes a key, ``"desired": null`` clears the section. Objects left empty are removed
  (a document never holds ``{}``), and an object that sets nothing creates nothing.
- Every leaf written gets ``now_ms`` as its metadata timestamp; deleted keys lose their metadata.
- An update carrying ``version`` is accepted only when it equals the document's version
  (``twin.version_conflict`` otherwise); every accepted update adds 1 to the version.
- ``delta`` is computed, never stored: the desired leaves/subtrees whose value differs from, or is
  missing in, reported, compared recursively. Keys only in reported never appear.

Everything is pure: time comes in as ``now_ms``; inputs are never mutated (unchanged subtrees are
shared between the old and the new document, so treat documents as read-only).
"""

from __future__ import annotations

import copy
import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TypeAlias, cast

from pulse.protocol.envelope import MAX_INT, JsonObject, JsonValue
from pulse.protocol.errors import Code, TwinError

Meta: TypeAlias = "int | dict[str, Meta]"
"""Metadata mirrors a section: a leaf's timestamp (Unix ms), or an object of key -> Meta."""
MetaObject: TypeAlias = "dict[str, Meta]"

_KEY_RE = re.compile(r"[A-Za-z0-9_\-]+")


@dataclass(frozen=True, slots=True)
class TwinLimits:
    """What one twin may hold. The cloud and gateways may configure their own."""

    max_state_bytes: int = 8 * 1024
    """Compact UTF-8 JSON of ``{"desired": ..., "reported": ...}`` after an update."""
    max_depth: int = 6
    """Levels of objects/arrays in a section: ``{"a": 1}`` is 1, ``{"a": {"b": [1]}}`` is 3."""
    max_key_len: int = 64
    max_update_bytes: int = 16 * 1024
    """Raw JSON of one update, checked by ``parse_update`` before decoding."""
    max_document_bytes: int = 256 * 1024
    """Raw JSON of a stored document (state and metadata), checked by ``from_json``."""


DEFAULT_LIMITS = TwinLimits()
_LOAD_LIMITS = TwinLimits(max_depth=32, max_key_len=256)  # stored twins: shape, not today's update limits


@dataclass(frozen=True, slots=True)
class TwinDocument:
    """One device's twin. ``TwinDocument()`` is the twin of a device nobody has written yet."""

    desired: JsonObject = field(default_factory=dict)
    reported: JsonObject = field(default_factory=dict)
    desired_meta: MetaObject = field(default_factory=dict)
    reported_meta: MetaObject = field(default_factory=dict)
    version: int = 0

    @property
    def delta(self) -> JsonObject:
        """Desired leaves/subtrees that reported does not match; ``{}`` when there is nothing to do."""
        return compute_delta(self.desired, self.reported)


@dataclass(frozen=True, slots=True)
class TwinUpdate:
    """A partial update. ``desired``/``reported`` of None leave the section alone; ``clear_*``
    empties it (wire form ``"desired": null``). ``version`` is the version the writer expects."""

    desired: JsonObject | None = None
    reported: JsonObject | None = None
    clear_desired: bool = False
    clear_reported: bool = False
    version: int | None = None

    def __post_init__(self) -> None:
        if (self.clear_desired and self.desired is not None) or (self.clear_reported and self.reported is not None):
            raise TwinError(Code.TWIN_BAD_UPDATE, "a section is either cleared (null) or merged (object), not both")
        if self.desired is None and self.reported is None and not (self.clear_desired or self.clear_reported):
            raise TwinError(Code.TWIN_BAD_UPDATE, "an update sets desired, reported or both")
        if self.version is not None and (type(self.version) is not int or self.version < 0):
            raise TwinError(Code.TWIN_BAD_UPDATE, "version is a non-negative integer", version=repr(self.version)[:32])

    def to_json(self) -> bytes:
        state: dict[str, JsonValue] = {}
        for name, patch, clear in (
            ("desired", self.desired, self.clear_desired),
            ("reported", self.reported, self.clear_reported),
        ):
            if clear:
                state[name] = None
            elif patch is not None:
                state[name] = patch
        doc: dict[str, JsonValue] = {"state": state}
        if self.version is not None:
            doc["version"] = self.version
        return _dumps(doc)


@dataclass(frozen=True, slots=True)
class SectionChange:
    """What an update did to one section: leaves written (dotted path -> value) and paths removed."""

    set: Mapping[str, JsonValue] = field(default_factory=dict)
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.set) or bool(self.removed)

    def to_json(self) -> JsonObject:
        return {"set": dict(self.set), "removed": list(self.removed)}


@dataclass(frozen=True, slots=True)
class TwinChange:
    """The diff of one accepted update, for the audit trail. Paths are dotted (keys never hold '.')."""

    version: int
    desired: SectionChange
    reported: SectionChange
    delta_changed: bool
    """True when the device must be told: publish the new delta (or clear it when empty)."""

    def to_json(self) -> JsonObject:
        out: JsonObject = {"version": self.version}
        if self.desired:
            out["desired"] = self.desired.to_json()
        if self.reported:
            out["reported"] = self.reported.to_json()
        return out


# --- update ------------------------------------------------------------------------------------


def apply_update(
    doc: TwinDocument, update: TwinUpdate, *, now_ms: int, limits: TwinLimits = DEFAULT_LIMITS
) -> tuple[TwinDocument, TwinChange]:
    """Apply one update; returns the new document and what changed. Raises ``TwinError``."""
    for name, patch in (("desired", update.desired), ("reported", update.reported)):
        if patch is not None:
            _check_section(patch, name, limits, allow_null=True)
    if update.version is not None and update.version != doc.version:
        raise TwinError(
            Code.TWIN_VERSION_CONFLICT,
            f"the twin is at version {doc.version}, the update expected {update.version}; read it again and retry",
            expected=update.version,
            current=doc.version,
        )
    desired, desired_meta, desired_change = _apply_section(
        doc.desired, doc.desired_meta, update.desired, update.clear_desired, now_ms
    )
    reported, reported_meta, reported_change = _apply_section(
        doc.reported, doc.reported_meta, update.reported, update.clear_reported, now_ms
    )
    size = state_size(desired, reported)
    if size > limits.max_state_bytes and size > state_size(doc.desired, doc.reported):
        raise TwinError(
            Code.TWIN_TOO_LARGE,
            f"the twin's state would be {size} bytes; the limit is {limits.max_state_bytes} (delete keys to make room)",
            size=size,
            limit=limits.max_state_bytes,
        )
    new = TwinDocument(desired, reported, desired_meta, reported_meta, doc.version + 1)
    delta_changed = (desired_change or reported_change) and not same(doc.delta, new.delta)
    return new, TwinChange(new.version, desired_change, reported_change, bool(delta_changed))


def _apply_section(
    values: JsonObject, meta: MetaObject, patch: JsonObject | None, clear: bool, now_ms: int
) -> tuple[JsonObject, MetaObject, SectionChange]:
    if clear:
        return {}, {}, SectionChange(removed=tuple(values))
    if patch is None:
        return values, meta, SectionChange()
    written: dict[str, JsonValue] = {}
    removed: list[str] = []
    new_values, new_meta = _merge(values, meta, patch, now_ms, "", written, removed)
    return new_values, new_meta, SectionChange(written, tuple(removed))


def _merge(
    values: JsonObject,
    meta: MetaObject,
    patch: JsonObject,
    now_ms: int,
    prefix: str,
    written: dict[str, JsonValue],
    removed: list[str],
) -> tuple[JsonObject, MetaObject]:
    out, out_meta = dict(values), dict(meta)
    for key, new in patch.items():
        path = prefix + key
        old = out.get(key)
        if new is None:
            if key in out:
                del out[key], out_meta[key]
                removed.append(path)
        elif isinstance(new, dict):
            old_obj = old if isinstance(old, dict) else {}
            old_meta = out_meta.get(key) if isinstance(old, dict) else {}
            sub, sub_meta = _merge(old_obj, cast(MetaObject, old_meta), new, now_ms, path + ".", written, removed)
            if sub:
                out[key], out_meta[key] = sub, sub_meta
            elif isinstance(old, dict):  # every key deleted: the object goes too
                del out[key], out_meta[key]
        else:
            out[key] = written[path] = copy.deepcopy(new)
            out_meta[key] = now_ms
    return out, out_meta


# --- delta -------------------------------------------------------------------------------------


def compute_delta(desired: JsonObject, reported: JsonObject) -> JsonObject:
    """The desired keys whose value differs from reported or is missing there, recursively."""
    out: JsonObject = {}
    for key, want in desired.items():
        if key not in reported:
            out[key] = want
            continue
        have = reported[key]
        if isinstance(want, dict) and isinstance(have, dict):
            sub = compute_delta(want, have)
            if sub:
                out[key] = sub
        elif not same(want, have):
            out[key] = want
    return out


def same(a: JsonValue, b: JsonValue) -> bool:
    """JSON equality: numbers by value (1 == 1.0), but booleans are not numbers (true != 1)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(v, b[k]) for k, v in a.items())
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, int | float) and isinstance(b, int | float):
        return a == b
    return type(a) is type(b) and a == b


def _project_meta(delta: JsonObject, meta: MetaObject) -> MetaObject:
    """The desired metadata of the leaves a delta holds."""
    return {k: _project_meta(v, cast(MetaObject, meta[k])) if isinstance(v, dict) else meta[k] for k, v in delta.items()}


# --- validation --------------------------------------------------------------------------------


def _check_section(section: JsonObject, name: str, limits: TwinLimits, *, allow_null: bool) -> None:
    """Keys, values and depth of one section (or section patch). Iterative: no recursion limits."""
    max_depth = limits.max_depth
    stack: list[tuple[str, object, int, bool]] = [(name, section, 1, False)]
    while stack:
        path, value, depth, in_array = stack.pop()
        if isinstance(value, dict):
            if depth > max_depth:
                raise TwinError(
                    Code.TWIN_TOO_DEEP, f"objects and arrays nest at most {max_depth} levels in a section", path=path[:200]
                )
            for key, item in value.items():
                if not isinstance(key, str) or len(key) > limits.max_key_len or not _KEY_RE.fullmatch(key):
                    raise TwinError(
                        Code.TWIN_BAD_KEY,
                        f"keys are 1-{limits.max_key_len} characters of letters, digits, '_' and '-'",
                        path=path[:200],
                        key=key[:80] if isinstance(key, str) else repr(key)[:80],
                    )
                if item is None and not allow_null and not in_array:
                    raise TwinError(
                        Code.TWIN_BAD_VALUE, "null deletes a key in an update; a document keeps no null keys", path=path[:200]
                    )
                stack.append((f"{path}.{key}", item, depth + 1, in_array))
        elif isinstance(value, list):
            if depth > max_depth:
                raise TwinError(
                    Code.TWIN_TOO_DEEP, f"objects and arrays nest at most {max_depth} levels in a section", path=path[:200]
                )
            stack.extend((f"{path}[{i}]", item, depth + 1, True) for i, item in enumerate(value))
        elif value is None or isinstance(value, bool | str):
            continue
        elif isinstance(value, int):
            if not -MAX_INT <= value <= MAX_INT:
                raise TwinError(Code.TWIN_BAD_VALUE, "integers are within ±2**53 (exact in every JSON reader)", path=path[:200])
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise TwinError(Code.TWIN_BAD_VALUE, "numbers are finite", path=path[:200])
        else:
            raise TwinError(Code.TWIN_BAD_VALUE, "values are JSON", path=path[:200], type=type(value).__name__)


def state_size(desired: JsonObject, reported: JsonObject) -> int:
    """Bytes of ``{"desired": ..., "reported": ...}`` as compact UTF-8 JSON: what the size limit counts."""
    return len(_dumps({"desired": desired, "reported": reported}))


# --- JSON codec --------------------------------------------------------------------------------


def _dumps(doc: Mapping[str, object]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a number")


def _loads(raw: bytes | str, code: Code, max_bytes: int, what: str) -> dict[str, object]:
    size = len(raw.encode() if isinstance(raw, str) else raw)
    if size > max_bytes:
        raise TwinError(Code.TWIN_TOO_LARGE, f"{what} is at most {max_bytes} bytes of JSON", size=size)
    try:
        doc = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise TwinError(code, f"{what} is not valid UTF-8 JSON: {str(exc)[:120]}") from exc
    if not isinstance(doc, dict):
        raise TwinError(code, f"{what} is a JSON object")
    return doc


def _only(doc: Mapping[str, object], allowed: set[str], code: Code, where: str) -> None:
    if unknown := sorted(set(doc) - allowed):
        raise TwinError(code, f"{where} holds only {', '.join(sorted(allowed))}", unknown=", ".join(unknown)[:200])


def parse_update(raw: bytes | str, *, limits: TwinLimits = DEFAULT_LIMITS) -> TwinUpdate:
    """Decode an update from its wire form; ``apply_update`` checks its content against the limits."""
    return update_from_obj(_loads(raw, Code.TWIN_BAD_UPDATE, limits.max_update_bytes, "an update"))


def update_from_obj(doc: Mapping[str, object]) -> TwinUpdate:
    """Build an update from already-decoded JSON (an API body): ``{"state": {...}, "version": n}``."""
    if not isinstance(doc, Mapping):
        raise TwinError(Code.TWIN_BAD_UPDATE, "an update is a JSON object")
    _only(doc, {"state", "version"}, Code.TWIN_BAD_UPDATE, "an update")
    state, version = doc.get("state"), doc.get("version")
    if not isinstance(state, dict):
        raise TwinError(Code.TWIN_BAD_UPDATE, 'an update is {"state": {"desired": {...}, "reported": {...}}, "version": n}')
    _only(state, {"desired", "reported"}, Code.TWIN_BAD_UPDATE, "an update's state")
    if version is not None and type(version) is not int:
        raise TwinError(Code.TWIN_BAD_UPDATE, "version is a non-negative integer", version=repr(version)[:32])
    parts: dict[str, JsonObject | None] = {}
    for name in ("desired", "reported"):
        patch = state.get(name)
        if patch is not None and not isinstance(patch, dict):
            raise TwinError(Code.TWIN_BAD_UPDATE, f"{name} is an object to merge, or null to clear it")
        parts[name] = cast("JsonObject | None", patch)
    return TwinUpdate(
        desired=parts["desired"],
        reported=parts["reported"],
        clear_desired="desired" in state and state["desired"] is None,
        clear_reported="reported" in state and state["reported"] is None,
        version=version,
    )


def _meta_to_json(meta: MetaObject) -> JsonObject:
    return {k: {"timestamp": v} if isinstance(v, int) else _meta_to_json(v) for k, v in meta.items()}


def _meta_from_json(values: JsonObject, raw: object, path: str) -> MetaObject:
    """Metadata read back against the state it describes: same keys, a timestamp per leaf."""
    if not isinstance(raw, dict) or raw.keys() != values.keys():
        raise TwinError(Code.TWIN_BAD_DOCUMENT, "metadata must have exactly the state's keys", path=path[:200])
    out: MetaObject = {}
    for key, value in values.items():
        item = raw[key]
        if isinstance(value, dict):
            out[key] = _meta_from_json(value, item, f"{path}.{key}")
        elif isinstance(item, dict) and item.keys() == {"timestamp"} and type(item["timestamp"]) is int:
            out[key] = item["timestamp"]
        else:
            raise TwinError(Code.TWIN_BAD_DOCUMENT, 'a leaf\'s metadata is {"timestamp": ms}', path=f"{path}.{key}"[:200])
    return out


def to_json(doc: TwinDocument) -> bytes:
    """The stored form: version, state (desired, reported) and metadata. The delta is not stored."""
    return _dumps(
        {
            "version": doc.version,
            "state": {"desired": doc.desired, "reported": doc.reported},
            "metadata": {"desired": _meta_to_json(doc.desired_meta), "reported": _meta_to_json(doc.reported_meta)},
        }
    )


def from_json(raw: bytes | str, *, limits: TwinLimits = DEFAULT_LIMITS) -> TwinDocument:
    """Read a document written by ``to_json`` (or a ``document_message``: its delta and timestamp are
    ignored). Checks the shape, not today's update limits, so a twin stored under other limits loads."""
    doc = _loads(raw, Code.TWIN_BAD_DOCUMENT, limits.max_document_bytes, "a twin document")
    _only(doc, {"version", "state", "metadata", "timestamp"}, Code.TWIN_BAD_DOCUMENT, "a twin document")
    version, state, metadata = doc.get("version"), doc.get("state", {}), doc.get("metadata", {})
    if type(version) is not int or version < 0:
        raise TwinError(Code.TWIN_BAD_DOCUMENT, "a twin document has a non-negative integer version")
    if not isinstance(state, dict) or not isinstance(metadata, dict):
        raise TwinError(Code.TWIN_BAD_DOCUMENT, "state and metadata are objects")
    _only(state, {"desired", "reported", "delta"}, Code.TWIN_BAD_DOCUMENT, "a twin document's state")
    _only(metadata, {"desired", "reported"}, Code.TWIN_BAD_DOCUMENT, "a twin document's metadata")
    sections: list[tuple[JsonObject, MetaObject]] = []
    for name in ("desired", "reported"):
        values = state.get(name, {})
        if not isinstance(values, dict):
            raise TwinError(Code.TWIN_BAD_DOCUMENT, f"state.{name} is an object")
        try:
            _check_section(values, name, _LOAD_LIMITS, allow_null=False)
        except TwinError as exc:
            raise TwinError(Code.TWIN_BAD_DOCUMENT, exc.message, **exc.context) from exc
        if any(not v for v in _objects(values)):
            raise TwinError(Code.TWIN_BAD_DOCUMENT, "a twin document holds no empty objects", section=name)
        sections.append((values, _meta_from_json(values, metadata.get(name, {}), name)))
    (desired, desired_meta), (reported, reported_meta) = sections
    return TwinDocument(desired, reported, desired_meta, reported_meta, version)


def _objects(values: JsonObject) -> Iterator[JsonObject]:
    """Every object nested in a section (outside arrays), not the section itself."""
    for value in values.values():
        if isinstance(value, dict):
            yield value
            yield from _objects(value)


# --- what the gateway publishes to a device ------------------------------------------------------


def delta_message(doc: TwinDocument, *, now_ms: int) -> bytes | None:
    """Payload for ``pulse/{device}/twin/desired`` (retained), or None when there is no delta (the
    gateway then clears the retained message by publishing an empty payload)::

        {"version": 7, "timestamp": 1764061200000, "state": {...delta...}, "metadata": {...}}

    ``metadata`` holds the desired timestamps of the delta's leaves."""
    delta = doc.delta
    if not delta:
        return None
    meta = _meta_to_json(_project_meta(delta, doc.desired_meta))
    return _dumps({"version": doc.version, "timestamp": now_ms, "state": delta, "metadata": meta})


def document_message(doc: TwinDocument, *, now_ms: int) -> bytes:
    """Payload for ``pulse/{device}/twin/document``, the answer to ``twin/get``: the whole twin with
    its delta (omitted when empty) and the time it was read."""
    state: JsonObject = {"desired": doc.desired, "reported": doc.reported}
    if delta := doc.delta:
        state["delta"] = delta
    metadata: JsonObject = {"desired": _meta_to_json(doc.desired_meta), "reported": _meta_to_json(doc.reported_meta)}
    return _dumps({"version": doc.version, "timestamp": now_ms, "state": state, "metadata": metadata})


# --- the gateway's copy --------------------------------------------------------------------------


def take_desired(local: TwinDocument, cloud: TwinDocument, *, seed_reported: bool = False) -> TwinDocument:
    """The gateway's twin after a ``twin_desired`` downlink item (``sync.TwinDesired``): the cloud's
    desired section with its timestamps; reported stays the gateway's own, because the gateway
    hears the device before the cloud does. ``seed_reported``: the gateway has no twin of the
    device yet, so it starts from the cloud's reported too. The gateway's version counts its own
    changes (the cloud's version is kept beside it to order downlink items), and grows by one."""
    reported, reported_meta = (cloud.reported, cloud.reported_meta) if seed_reported else (local.reported, local.reported_meta)
    return TwinDocument(cloud.desired, reported, cloud.desired_meta, reported_meta, local.version + 1)
