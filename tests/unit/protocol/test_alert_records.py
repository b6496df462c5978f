"""Alert records (the ALERTS sync stream body): what a gateway writes, the cloud reads back."""

from __future__ import annotations

import pytest

from pulse.protocol.alerts import AlertRecord, is_reserved_rule_id
from pulse.protocol.errors import RuleError
from pulse.protocol.rules import CloseAlert, Explanation, Fingerprint, OpenAlert, Severity

pytestmark = pytest.mark.unit

EXPL = Explanation(text="b7: temp_c is 31, above 30", rule_id="hot", rule_version=3, device_id="b7", at_ms=1000, last=31)


@pytest.mark.parametrize("action", [OpenAlert, CloseAlert])
def test_an_action_round_trips_through_the_record_body(action: type) -> None:
    rec = AlertRecord.of(action(Fingerprint("gateway", "b7", "hot"), Severity.MAJOR, EXPL))
    back = AlertRecord.from_body(rec.to_body(), at_ms=1000)
    assert back == rec
    assert back.rule_version == 3 and back.explanation["last"] == 31


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"action": "delete"}, "action"),
        ({"rule_id": "GATEWAY_OFFLINE"}, "rule_id"),
        ({"rule_id": "pulse:x"}, "rule_id"),
        ({"device_id": "a b"}, "device_id"),
        ({"severity": "huge"}, "severity"),
        ({"explanation": "why"}, "explanation"),
    ],
)
def test_a_body_that_is_not_an_alert_record_is_refused_with_its_code(change: dict[str, object], problem: str) -> None:
    body = {**AlertRecord.of(OpenAlert(Fingerprint("g", "b7", "hot"), Severity.MAJOR, EXPL)).to_body(), **change}
    with pytest.raises(RuleError) as info:
        AlertRecord.from_body(body, at_ms=1)
    assert info.value.code == "rule.bad_alert_record" and problem in info.value.message


def test_pulse_reserves_its_own_rule_ids() -> None:
    assert is_reserved_rule_id("GATEWAY_OFFLINE") and is_reserved_rule_id("pulse:anything")
    assert not is_reserved_rule_id("hot")
