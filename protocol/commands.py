"""Commands: an operator asks one device to do something once, before a deadline.

A command is a frozen value; its life is a small state machine whose legal moves are the table
``TRANSITIONS`` below (h11 style: the table is the contract, ``transition`` only looks it up)::

    queued --deliver--> delivered --send--> sent --succeed--> succeeded
                          |  ^ deliver          \\--fail-----> failed
                          |  (redelivery)
    queued | delivered --expire--> expired      (only once expires_at_ms has come)
    delivered --succeed|fail--> succeeded|failed (the device's answer proves it was sent)

The expiry rule: a command is *never sent* once ``now_ms >= expires_at_ms``. ``deliver`` and
``send`` at or after that instant return the command ``expired`` instead, so a runner publishes to the
device only when the state it gets back is ``sent``. Once sent, a command waits for the device's
answer (succeeded or failed); it does not expire, because the device may already have acted on it.

Wire forms (docs/protocol.md, "Commands"): what the gateway publishes on ``pulse/{device}/cmd/{id}``
(``command_message``), what the device answers on ``.../cmd/{id}/ack`` (``parse_ack``), and the
stored/downlink form (``to_json``/``from_json``).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import cast

from pulse.protocol.envelope import JsonObject, JsonValue, json_fits
from pulse.protocol.errors import Code, CommandError
from pulse.protocol.topics import valid_command_id, valid_device_id

_NAME_RE = re.compile(r"[A-Za-z][A-Za-z0-9_.\-]{0,63}")
MAX_ERROR_LEN = 512


class CommandState(StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"  # the gateway has it
    SENT = "sent"  # the gateway published it to the device
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    EXPIRED = "expired"  # never sent: its deadline came first


class CommandEvent(StrEnum):
    DELIVER = "deliver"
    SEND = "send"
    SUCCEED = "succeed"
    FAIL = "fail"
    EXPIRE = "expire"


S, E = CommandState, CommandEvent
TRANSITIONS: Mapping[tuple[CommandState, CommandEvent], CommandState] = {
    (S.QUEUED, E.DELIVER): S.DELIVERED,
    (S.QUEUED, E.EXPIRE): S.EXPIRED,
    (S.DELIVERED, E.DELIVER): S.DELIVERED,  # the downlink is at-least-once; the gateway dedupes by id
    (S.DELIVERED, E.SEND): S.SENT,
    (S.DELIVERED, E.SUCCEED): S.SUCCEEDED,  # the answer proves it was sent, whatever was recorded
    (S.DELIVERED, E.FAIL): S.FAILED,
    (S.DELIVERED, E.EXPIRE): S.EXPIRED,
    (S.SENT, E.SUCCEED): S.SUCCEEDED,
    (S.SENT, E.FAIL): S.FAILED,
}
TERMINAL = frozenset({S.SUCCEEDED, S.FAILED, S.EXPIRED})
_GATED_BY_EXPIRY = frozenset({E.DELIVER, E.SEND})
del S, E


@dataclass(frozen=True, slots=True)
class CommandLimits:
    max_params_bytes: int = 4 * 1024
    max_params_depth: int = 6
    max_result_bytes: int = 4 * 1024
    max_ttl_ms: int = 7 * 24 * 3600 * 1000


DEFAULT_LIMITS = CommandLimits()


@dataclass(frozen=True, slots=True)
class Command:
    id: str
    device_id: str
    name: str
    params: JsonObject
    created_ms: int
    expires_at_ms: int
    """The first instant at which the command is expired (never sent from then on)."""
    state: CommandState = CommandState.QUEUED
    history: tuple[tuple[CommandState, int], ...] = ()
    """Every state the command entered, with when (Unix ms), starting with queued."""
    result: JsonObject | None = None
    error: str | None = None

    @property
    def updated_ms(self) -> int:
        return self.history[-1][1] if self.history else self.created_ms

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


def _bad(message: str, **context: object) -> CommandError:
    return CommandError(Code.COMMAND_BAD, message, **context)


def _json_object(value: object, what: str, max_bytes: int, max_depth: int, code: Code) -> JsonObject:
    if not isinstance(value, dict) or not json_fits(value, max_depth):
        raise CommandError(code, f"{what} is a JSON object nested at most {max_depth} levels")
    try:
        size = len(json.dumps(value, separators=(",", ":"), allow_nan=False).encode())
    except (TypeError, ValueError) as exc:
        raise CommandError(code, f"{what} holds only JSON values (finite numbers)") from exc
    if size > max_bytes:
        raise CommandError(code, f"{what} is at most {max_bytes} bytes of JSON", size=size)
    return cast(JsonObject, value)


def new_command(
    *,
    id: str,
    device_id: str,
    name: str,
    params: Mapping[str, object] | None = None,
    now_ms: int,
    expires_at_ms: int,
    limits: CommandLimits = DEFAULT_LIMITS,
) -> Command:
    """A queued command, checked: ids fit in topics, the name is a short identifier, params are a
    small JSON object, and the deadline is after now and within ``max_ttl_ms``."""
    if not isinstance(id, str) or not valid_command_id(id):
        raise _bad("command ids are 1-64 characters of letters, digits, '_', '-', '.', ':' starting with a letter or digit")
    if not isinstance(device_id, str) or not valid_device_id(device_id):
        raise _bad("not a valid device id", command_id=id)
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name):
        raise _bad("command names are 1-64 characters of letters, digits, '_', '.', '-' starting with a letter", command_id=id)
    raw_params = {} if params is None else dict(params) if isinstance(params, Mapping) else params
    checked = _json_object(raw_params, "params", limits.max_params_bytes, limits.max_params_depth, Code.COMMAND_BAD)
    if type(now_ms) is not int or type(expires_at_ms) is not int or not now_ms < expires_at_ms <= now_ms + limits.max_ttl_ms:
        raise _bad(f"a command expires after it is made and within {limits.max_ttl_ms} ms", command_id=id)
    return Command(id, device_id, name, checked, now_ms, expires_at_ms, CommandState.QUEUED, ((CommandState.QUEUED, now_ms),))


def is_expired(cmd: Command, now_ms: int) -> bool:
    """True when the command can no longer be sent: ``now_ms`` is at or past its deadline."""
    return now_ms >= cmd.expires_at_ms


def transition(
    cmd: Command, event: CommandEvent, now_ms: int, *, result: JsonObject | None = None, error: str | None = None
) -> Command:
    """The command after ``event`` at ``now_ms``; raises ``CommandError`` for a move not in the table.

    ``deliver``/``send`` at or after the deadline give the command ``expired`` instead (never sent);
    ``expire`` before the deadline is refused. ``result`` and ``error`` (from ``parse_ack``, which
    checks them) go with succeed/fail."""
    target = TRANSITIONS.get((cmd.state, event))
    if target is None:
        raise CommandError(
            Code.COMMAND_ILLEGAL_TRANSITION,
            f"a {cmd.state} command cannot {event}",
            command_id=cmd.id,
            state=str(cmd.state),
            event=str(event),
        )
    if event is CommandEvent.EXPIRE and not is_expired(cmd, now_ms):
        raise CommandError(
            Code.COMMAND_ILLEGAL_TRANSITION,
            "a command expires only once its deadline has come",
            command_id=cmd.id,
            expires_at_ms=cmd.expires_at_ms,
            now_ms=now_ms,
        )
    if event in _GATED_BY_EXPIRY and is_expired(cmd, now_ms):
        target = CommandState.EXPIRED
    if target is cmd.state:
        return cmd
    keep = target in (CommandState.SUCCEEDED, CommandState.FAILED)
    return replace(
        cmd,
        state=target,
        history=(*cmd.history, (target, now_ms)),
        result=result if keep else None,
        error=error[:MAX_ERROR_LEN] if keep and error is not None else None,
    )


# --- device wire forms ---------------------------------------------------------------------------


def command_message(cmd: Command) -> bytes:
    """What the gateway publishes on ``pulse/{device}/cmd/{id}`` (QoS 1, not retained)::

    {"id": "c-17", "name": "reboot", "params": {"delay_s": 5}, "expires": 1764061500000}"""
    doc = {"id": cmd.id, "name": cmd.name, "params": cmd.params, "expires": cmd.expires_at_ms}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


@dataclass(frozen=True, slots=True)
class Ack:
    """A device's answer: ``{"id": ..., "status": "succeeded"|"failed", "result": {...}, "error": "..."}``."""

    command_id: str
    event: CommandEvent
    result: JsonObject | None = None
    error: str | None = None


_STATUS = {"succeeded": CommandEvent.SUCCEED, "failed": CommandEvent.FAIL}


def parse_ack(body: Mapping[str, object], *, limits: CommandLimits = DEFAULT_LIMITS) -> Ack:
    """Read the body of a ``command_ack`` envelope; apply it with
    ``transition(cmd, ack.event, now_ms, result=ack.result, error=ack.error)``."""
    cmd_id, status, result, error = body.get("id"), body.get("status"), body.get("result"), body.get("error")
    if not isinstance(cmd_id, str) or not valid_command_id(cmd_id):
        raise CommandError(Code.COMMAND_BAD_ACK, "an answer names its command: id")
    event = _STATUS.get(status) if isinstance(status, str) else None
    if event is None:
        raise CommandError(Code.COMMAND_BAD_ACK, 'status is "succeeded" or "failed"', command_id=cmd_id, status=repr(status)[:40])
    checked = None
    if result is not None:
        checked = _json_object(result, "result", limits.max_result_bytes, limits.max_params_depth, Code.COMMAND_BAD_ACK)
    if error is not None and not isinstance(error, str):
        raise CommandError(Code.COMMAND_BAD_ACK, "error is a sentence (string)", command_id=cmd_id)
    return Ack(cmd_id, event, checked, error[:MAX_ERROR_LEN] if error else None)


# --- stored / downlink form ----------------------------------------------------------------------


def to_json(cmd: Command) -> bytes:
    doc: dict[str, JsonValue] = {
        "id": cmd.id,
        "device": cmd.device_id,
        "name": cmd.name,
        "params": cmd.params,
        "created": cmd.created_ms,
        "expires": cmd.expires_at_ms,
        "state": cmd.state.value,
        "history": [[state.value, at] for state, at in cmd.history],
    }
    if cmd.result is not None:
        doc["result"] = cmd.result
    if cmd.error is not None:
        doc["error"] = cmd.error
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode()


def from_json(raw: bytes | str, *, limits: CommandLimits = DEFAULT_LIMITS) -> Command:
    """Read a command written by ``to_json``; refuses anything the rules would not have produced."""
    try:
        doc = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        raise _bad(f"a command is JSON: {str(exc)[:120]}") from exc
    if not isinstance(doc, dict):
        raise _bad("a command is a JSON object")
    try:
        cmd = new_command(
            id=doc["id"],
            device_id=doc["device"],
            name=doc["name"],
            params=doc["params"],
            now_ms=doc["created"],
            expires_at_ms=doc["expires"],
            limits=replace(limits, max_ttl_ms=2**63),  # stored under whatever TTL limit applied then
        )
        state = CommandState(doc["state"])
        history = tuple((CommandState(s), at) for s, at in doc["history"])
    except (KeyError, TypeError, ValueError) as exc:
        raise _bad(f"a stored command is malformed: {str(exc)[:120]}") from exc
    if not history or history[0] != (CommandState.QUEUED, cmd.created_ms) or history[-1][0] is not state:
        raise _bad("a command's history starts queued at its creation and ends in its state", command_id=cmd.id)
    if any(type(at) is not int for _, at in history):
        raise _bad("history times are integers (Unix ms)", command_id=cmd.id)
    result, error = doc.get("result"), doc.get("error")
    checked = None
    if result is not None:
        checked = _json_object(result, "result", limits.max_result_bytes, limits.max_params_depth, Code.COMMAND_BAD)
    if error is not None and not isinstance(error, str):
        raise _bad("error is a string", command_id=cmd.id)
    return replace(cmd, state=state, history=history, result=checked, error=error)
