"""Print the console's channel kinds file (``render_console_kinds``)."""

from __future__ import annotations

from pulse.cloud.notify.senders import render_console_kinds

print(render_console_kinds(), end="")
