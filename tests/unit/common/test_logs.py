"""One log format for cloud and gateway: JSON lines carrying the context Pulse knows (request id,
tenant, gateway, device), plain text with the same fields on a terminal."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from pulse.common import logs

pytestmark = pytest.mark.unit


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_root() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def test_json_lines_carry_the_bound_context_and_a_records_own_fields(restore_root: None) -> None:
    out = io.StringIO()
    logs.configure("INFO", stream=out)  # not a terminal: JSON
    log = logging.getLogger("pulse.test")
    with logs.bound(request_id="r-1", tenant="t-1"):
        log.info("stored %d rows", 3, extra={"device": "dev-7"})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    log.debug("not at INFO")
    log.warning("outside")
    first, second, third = (json.loads(line) for line in out.getvalue().splitlines())
    assert first["msg"] == "stored 3 rows" and first["level"] == "info" and first["logger"] == "pulse.test"
    assert (first["request_id"], first["tenant"], first["device"]) == ("r-1", "t-1", "dev-7")
    assert first["ts"].endswith("Z") and "gateway" not in first
    assert second["level"] == "error" and "ValueError: boom" in second["exc"]
    assert third["msg"] == "outside" and "request_id" not in third and "tenant" not in third  # the block's context ended


def test_a_terminal_gets_plain_text_with_the_fields_appended(restore_root: None) -> None:
    out = Terminal()
    logs.configure("INFO", stream=out)
    with logs.bound(gateway="gw-1"):
        logging.getLogger("pulse.edge").warning("link down")
    line = out.getvalue().strip()
    assert " WARNING pulse.edge: link down [gateway=gw-1]" in line
    with pytest.raises(json.JSONDecodeError):
        json.loads(line)


def test_log_tail_gives_the_last_lines_written_after_an_offset_on_one_line(tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    log.write_text("an earlier run failed\n")
    start = log.stat().st_size
    with log.open("a") as f:
        f.write("starting\nopening the buffer\n\nERROR the status page cannot listen on 127.0.0.1:8081: in use\n")
    assert logs.log_tail(log, start) == "starting | opening the buffer | ERROR the status page cannot listen on 127.0.0.1:8081: in use"
    assert logs.log_tail(log, start, lines=1).startswith("ERROR")
    assert logs.log_tail(log).startswith("starting")
    assert logs.log_tail(tmp_path / "missing.log") == ""
