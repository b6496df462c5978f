"""Alert records: how a gateway's rule actions travel to the cloud on the ALERTS sync stream.

A gateway that performs an alert action (``pulse.protocol.rules``) appends one record to its
``Stream.ALERTS`` buffer stream: record type ``"alert"``, the device id of the fingerprint, the
evaluation time, and as ``body``::

    {"action": "open" | "close" | "condition_cleared" | "flapping_started" | "flapping_ended",
     "rule_id": "boiler-hot", "device_id": "boiler-7", "severity": "major",
     "explanation": {... Explanation.to_dict() ...}}

The tenant is not in the body: the cloud takes it from the gateway's certificate. The cloud merges
these records into its alerts by fingerprint (tenant, device, rule), so an alert raised by both
tiers is one alert (``pulse.cloud.alerts.merge_edge_alerts``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, TypeAlias

from pulse.protocol.envelope import JsonValue
from pulse.protocol.errors import Code, RuleError
from pulse.protocol.rules import (
    CloseAlert,
    ConditionCleared,
    FlappingEnded,
    FlappingStarted,
    OpenAlert,
    Severity,
)
from pulse.protocol.topics import valid_device_id

RECORD_TYPE = "alert"
AlertVerb: TypeAlias = Literal["open", "close", "condition_cleared", "flapping_started", "flapping_ended"]
AlertAction: TypeAlias = OpenAlert | CloseAlert | ConditionCleared | FlappingStarted | FlappingEnded
VERBS: dict[type, AlertVerb] = {
    OpenAlert: "open",
    CloseAlert: "close",
    ConditionCleared: "condition_cleared",
    FlappingStarted: "flapping_started",
    FlappingEnded: "flapping_ended",
}
GATEWAY_OFFLINE = "GATEWAY_OFFLINE"
"""The rule id of the alert the cloud opens for a silent gateway (fingerprint device: ``gateway:<name>``)."""


NO_HEARTBEAT = "NO_HEARTBEAT"
"""The rule id of the cloud's built-in heartbeat rule: every device's connectivity state, and the
alert for a device that stopped reporting, without a rule anyone wrote (docs/alerts.md)."""


def is_reserved_rule_id(rule_id: str) -> bool:
    return rule_id in (GATEWAY_OFFLINE, NO_HEARTBEAT) or rule_id.startswith("pulse:")


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """One alert action, as data both tiers store: typed form of the record body."""

    action: AlertVerb
    rule_id: str
    device_id: str
    severity: Severity
    at_ms: int
    rule_version: int | None
    explanation: dict[str, JsonValue]

    @staticmethod
    def of(action: AlertAction) -> AlertRecord:
        expl = action.explanation
        return AlertRecord(
            VERBS[type(action)],
            action.fingerprint.rule,
            action.fingerprint.device,
            action.severity,
            expl.at_ms,
            expl.rule_version,
            expl.to_dict(),
        )

    def to_body(self) -> dict[str, JsonValue]:
        return {
            "action": self.action,
            "rule_id": self.rule_id,
            "device_id": self.device_id,
            "severity": str(self.severity),
            "explanation": self.explanation,
        }

    @staticmethod
    def from_body(body: object, *, at_ms: int) -> AlertRecord:
        """Read a synced record body (untrusted: it crossed the network). ``at_ms``: the record's time."""
        if not isinstance(body, dict):
            raise RuleError(Code.RULE_BAD_ALERT_RECORD, "an alert record body is a JSON object")
        action, rule_id, device_id = body.get("action"), body.get("rule_id"), body.get("device_id")
        if action not in ("open", "close", "condition_cleared", "flapping_started", "flapping_ended"):
            raise RuleError(
                Code.RULE_BAD_ALERT_RECORD, "action is open, close, condition_cleared, flapping_started or flapping_ended"
            )
        if not isinstance(rule_id, str) or not valid_device_id(rule_id) or is_reserved_rule_id(rule_id):
            raise RuleError(Code.RULE_BAD_ALERT_RECORD, "rule_id is a rule id")
        if not isinstance(device_id, str) or not valid_device_id(device_id):
            raise RuleError(Code.RULE_BAD_ALERT_RECORD, "device_id is a device id")
        try:
            severity = Severity(str(body.get("severity")))
        except ValueError:
            raise RuleError(Code.RULE_BAD_ALERT_RECORD, "severity is one of " + ", ".join(Severity)) from None
        explanation = body.get("explanation")
        if not isinstance(explanation, dict) or not isinstance(explanation.get("text"), str):
            raise RuleError(Code.RULE_BAD_ALERT_RECORD, "explanation is an object with a text")
        version = explanation.get("rule_version")
        return AlertRecord(action, rule_id, device_id, severity, at_ms, version if type(version) is int else None, explanation)
