"""An SLA summary as CSV (one table: section, name, value) and as a printable HTML page."""

from __future__ import annotations

import csv
import html
import io

from pulse.cloud.reports.sla import SlaSummary


def _pct(v: float | None) -> str:
    return "—" if v is None else f"{v:.2f} %"


def _duration(s: float | None) -> str:
    if s is None:
        return "—"
    minutes, sec = divmod(int(round(s)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min" if hours else f"{minutes} min {sec:02d} s"


def to_csv(s: SlaSummary) -> str:
    out = io.StringIO()
    w = csv.writer(out, lineterminator="\n")
    w.writerow(["section", "name", "value"])
    for name, value in (
        ("from", s.start.isoformat()), ("to", s.end.isoformat()), ("devices", s.devices), ("online_pct", s.online_pct),
        ("mttr_s", s.mttr_s), ("alerts_opened", s.alerts_opened), ("alerts_closed", s.alerts_closed),
    ):
        w.writerow(["summary", name, "" if value is None else value])
    for sev, n in sorted(s.alerts_by_severity.items()):
        w.writerow(["severity", sev, n])
    for c in s.top_devices:
        w.writerow(["top_device", c.name, c.alerts])
    for c in s.top_rules:
        w.writerow(["top_rule", c.name, c.alerts])
    for a in s.availability:
        w.writerow(["online_pct", a.device_id, a.online_pct])
    return out.getvalue()


def to_html(s: SlaSummary, tenant: str) -> str:
    e = html.escape

    def bars(rows: list[tuple[str, float, str]], scale: float) -> str:
        return "".join(
            f'<tr><td>{e(name)}</td><td class="bar"><span style="width:{0 if scale == 0 else 100 * v / scale:.1f}%"></span></td>'
            f"<td class=num>{e(label)}</td></tr>"
            for name, v, label in rows
        )

    top_devices = bars([(c.name, c.alerts, str(c.alerts)) for c in s.top_devices], max((c.alerts for c in s.top_devices), default=0))
    top_rules = bars([(c.name, c.alerts, str(c.alerts)) for c in s.top_rules], max((c.alerts for c in s.top_rules), default=0))
    worst = bars([(a.device_id, a.online_pct, _pct(a.online_pct)) for a in s.availability[:20]], 100)
    severities = "".join(f"<li>{e(k)}: {v}</li>" for k, v in sorted(s.alerts_by_severity.items())) or "<li>none</li>"
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>SLA report — {e(tenant)}</title>
<style>
body {{ font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #111; }}
h1 {{ font-size: 20px; }} h2 {{ font-size: 16px; margin-top: 1.5em; }}
.figures {{ display: flex; gap: 2em; }} .figures div {{ border: 1px solid #ccc; padding: .6em 1em; border-radius: 6px; }}
.figures b {{ display: block; font-size: 22px; }}
table {{ border-collapse: collapse; width: 100%; max-width: 720px; }} td {{ padding: 2px 6px; }}
td.bar {{ width: 60%; }} td.bar span {{ display: inline-block; height: 10px; background: #3b82f6; }}
td.num {{ text-align: right; white-space: nowrap; }}
@media print {{ body {{ margin: 0; }} }}
</style></head><body>
<h1>SLA report — {e(tenant)}</h1>
<p>{e(s.start.isoformat())} to {e(s.end.isoformat())} (UTC)</p>
<div class="figures">
<div>Online<b>{_pct(s.online_pct)}</b>{s.devices} devices</div>
<div>MTTR<b>{_duration(s.mttr_s)}</b>{s.alerts_closed} alerts closed</div>
<div>Alerts opened<b>{s.alerts_opened}</b></div>
</div>
<h2>Alerts by severity</h2><ul>{severities}</ul>
<h2>Top alerting devices</h2><table>{top_devices or '<tr><td>none</td></tr>'}</table>
<h2>Top alerting rules</h2><table>{top_rules or '<tr><td>none</td></tr>'}</table>
<h2>Least available devices</h2><table>{worst or '<tr><td>no device state in the period</td></tr>'}</table>
</body></html>
"""
