"""What a resumed firmware download shows never arrived of the previous one (cloud/firmware.py)."""

from __future__ import annotations

import pytest

from pulse.cloud.firmware import unarrived


@pytest.mark.parametrize(
    ("start", "sent", "resume_at", "taken_back"),
    [
        (0, 1000, 400, 600),  # cut: 400 bytes arrived, 600 were in flight
        (400, 600, 700, 300),  # a resumed download cut again
        (0, 1000, 0, 1000),  # nothing of it arrived
        (0, 1000, 1000, 0),  # all of it arrived (the requester asks for what comes after)
        (400, 600, 100, 0),  # the requester threw its copy away and starts before: those bytes did cross
        (0, 0, 0, 0),  # nothing written, nothing to take back
    ],
)
def test_a_resume_takes_back_the_bytes_written_past_where_it_starts(start: int, sent: int, resume_at: int, taken_back: int) -> None:
    assert unarrived(start, sent, resume_at) == taken_back
