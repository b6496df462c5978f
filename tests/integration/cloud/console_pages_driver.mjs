// Drives the console's newer pages in Chromium: create a rule (a refused one first, then a preview
// on its chart), see its alert open and ack it out of the Open tab, edit the device's desired state
// and see the delta (then a version conflict, re-applied), send a command, create a gateway, read
// the audit log, add a channel and an on-call schedule; then an operator's NOC with a live event
// arriving without a reload, TV mode, the tenant health matrix and every tenant's alerts.
// Task on stdin, observations as JSON on stdout (see test_console_pages_browser.py).
import { launch, readTask, stepper } from "./console_browser.mjs";

const task = await readTask();
const seen = { console_errors: [], steps: [] };
const step = stepper(seen);
const { browser, close, watch, shot, login, failed } = await launch(task, seen);

const api = async (path, { method = "GET", body, token = task.a_token } = {}) => {
  const r = await fetch(task.base + path, {
    method,
    headers: { Authorization: `Bearer ${token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  return { status: r.status, body: r.status === 204 ? null : await r.json() };
};
const ingest = (messages) =>
  fetch(task.base + "/ingest/v1/telemetry", {
    method: "POST",
    headers: { Authorization: `Bearer ${task.device_token}`, "Content-Type": "application/json" },
    body: JSON.stringify(messages),
  }).then((r) => r.status);
const until = async (what, fn, limitMs = 20_000) => {
  const end = Date.now() + limitMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 100));
  }
};
const nav = (page, name) => page.getByRole("navigation", { name: "Main" }).getByRole("link", { name, exact: true }).click();

try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  watch(page, "a");
  page.on("dialog", (d) => d.accept());
  await login(page, task.a_email);
  seen.tenant_nav = await page.getByRole("navigation", { name: "Main" }).getByRole("link").allTextContents();
  step("logged in");

  // --- rules: a refused rule shows the API's code at the field; preview; create -------------------
  await nav(page, "Rules");
  await page.getByRole("button", { name: "New rule" }).click();
  const form = page.getByRole("form", { name: "Rule" });
  await form.getByLabel("Rule id").fill(task.rule_id);
  await form.getByLabel("Rule severity").selectOption("critical");
  await form.getByLabel("Threshold", { exact: true }).fill("30");
  await form.getByLabel("Clear threshold").fill("28");
  await page.getByRole("button", { name: "Create rule" }).click(); // no metric yet
  seen.rule_error = await page.getByTestId("rule-error").textContent();
  seen.metric_invalid = await form.getByLabel("Metric", { exact: true }).getAttribute("aria-invalid");
  await shot(page, "20-rule-refused");
  await form.getByLabel("Metric", { exact: true }).fill(task.metric);
  await page.getByRole("button", { name: "Preview" }).click();
  const preview = page.getByTestId("preview-chart");
  await page.waitForFunction(() => {
    const p = document.querySelector('[data-testid="preview-chart"]')?.dataset.probe;
    return p && JSON.parse(p).points > 0;
  });
  seen.preview = JSON.parse(await preview.getAttribute("data-probe"));
  seen.preview_text = await page.getByTestId("rule-preview").locator("p").first().textContent();
  await shot(page, "21-rule-preview");
  await page.getByRole("button", { name: "Create rule" }).click();
  await page.getByTestId("rules-table").getByText(task.rule_id, { exact: true }).waitFor();
  seen.rule_rows = await page.getByTestId("rules-table").locator("tbody tr").count();
  step("rule created after a refused try and a preview");

  // --- an alert opens; ack it and it leaves the Open tab --------------------------------------------
  seen.hot_status = await ingest([{ v: 1, metrics: { [task.metric]: 41.5 } }]);
  const alert = await until("the alert", async () => (await api(`/api/v1/alerts?state=open&rule_id=${task.rule_id}`)).body.items[0]);
  seen.alert_id = alert.id;
  await nav(page, "Alerts");
  const row = page.getByTestId("alerts-table").locator(`tr[data-alert-id="${alert.id}"]`);
  await row.waitFor();
  seen.critical_count = Number(await page.getByTestId("count-critical").textContent());
  await row.getByRole("button", { name: /temp/ }).click();
  seen.explanation = await page.getByTestId("alert-detail").textContent();
  await shot(page, "22-alerts-open");
  await row.getByRole("button", { name: "Ack" }).click();
  await row.waitFor({ state: "detached" });
  seen.open_rows_after_ack = await page.getByTestId("alerts-table").count() === 0 ? 0 : await page.getByTestId("alerts-table").locator("tbody tr[data-alert-id]").count();
  await page.getByRole("group", { name: "State" }).getByRole("button", { name: "Acknowledged" }).click();
  await page.getByTestId("alerts-table").locator(`tr[data-alert-id="${alert.id}"]`).waitFor();
  seen.acked_state = await page.getByTestId("alerts-table").locator(`tr[data-alert-id="${alert.id}"] .badge`).first().textContent();
  await shot(page, "23-alerts-acknowledged");
  // where a notification's link lands: the alert on its own page
  await page.goto(`${task.base}/app/alerts/${alert.id}`);
  seen.alert_page_state = await page.getByTestId("alert-state").textContent();
  seen.alert_page_why = await page.getByTestId("alert-detail").textContent();
  step("alert acknowledged");

  // --- twin: edit desired, see the delta; a conflict re-applied; the device reports; a command ------
  await page.goto(`${task.base}/app/devices/${task.device}`);
  const twin = page.getByTestId("twin");
  await twin.waitFor();
  await twin.getByRole("button", { name: "Edit desired" }).click();
  await page.getByLabel("Desired state JSON").fill(JSON.stringify({ setpoint: 22, mode: "eco" }));
  await page.getByRole("button", { name: "Save desired" }).click();
  await page.waitForFunction(() => (document.querySelector('[data-testid="twin-delta"]')?.textContent ?? "").includes("setpoint"));
  seen.delta_after_edit = JSON.parse(await page.getByTestId("twin-delta").textContent());
  seen.pending_after_edit = await page.getByTestId("twin-pending").textContent();
  await shot(page, "24-twin-delta");
  // someone else writes while this editor is open: 409, the current doc is shown, re-apply
  await twin.getByRole("button", { name: "Edit desired" }).click();
  const other = await api(`/api/v1/devices/${task.device_id}/twin`, { method: "PATCH", body: { state: { desired: { mode: "boost", fan: 3 } } } });
  seen.other_write = other.status;
  await page.getByLabel("Desired state JSON").fill(JSON.stringify({ setpoint: 23, mode: "eco" }));
  await page.getByRole("button", { name: "Save desired" }).click();
  await page.getByTestId("twin-conflict").waitFor();
  seen.conflict_text = await page.getByTestId("twin-conflict").textContent();
  await shot(page, "25-twin-conflict");
  await page.getByRole("button", { name: "Re-apply my edit" }).click();
  await page.getByTestId("twin-conflict").waitFor({ state: "detached" });
  await page.waitForFunction(() => (document.querySelector('[data-testid="twin-desired"]')?.textContent ?? "").includes("23"));
  seen.desired_after_reapply = JSON.parse(await page.getByTestId("twin-desired").textContent());
  // the device reports what it now runs: the delta empties without a reload
  seen.reported_status = await ingest([{ v: 1, type: "twin_reported", body: { setpoint: 23, mode: "eco" } }]);
  await page.waitForFunction(() => document.querySelector('[data-testid="twin-delta"]')?.textContent?.trim() === "{}", null, { timeout: 30_000 });
  seen.rows_in_sync = await page.getByTestId("twin-rows").locator("tbody tr.twin-in-sync").count();
  await shot(page, "26-twin-in-sync");
  const cmd = page.getByRole("form", { name: "Send command" });
  await cmd.getByLabel("Command name").fill("reboot");
  await cmd.getByLabel("Command parameters").fill('{"delay_s": 5}');
  await cmd.getByRole("button", { name: "Send command" }).click();
  await page.getByTestId("commands-table").getByText("reboot").waitFor();
  seen.command_row = await page.getByTestId("commands-table").locator("tbody tr").first().textContent();
  await shot(page, "27-commands");
  step("twin edited, conflict re-applied, device reported, command sent");

  // --- gateways: the enrollment token is shown once ---------------------------------------------
  await nav(page, "Gateways");
  await page.getByLabel("Gateway name").fill("gw-north");
  await page.getByRole("button", { name: "Create gateway" }).click();
  seen.enrollment_token = (await page.getByTestId("secret-token").textContent()).trim();
  await shot(page, "28-gateway-token");
  await page.getByRole("button", { name: "I have stored it" }).click();
  await page.getByTestId("gateways-table").getByText("gw-north").waitFor();
  seen.gateway_row = await page.getByTestId("gateways-table").locator("tbody tr").first().textContent();
  step("gateway created");

  // --- audit log --------------------------------------------------------------------------------
  await nav(page, "Audit log");
  await page.getByTestId("audit-table").waitFor();
  seen.audit_actions = await page.getByTestId("audit-table").locator("tbody tr td:nth-child(3)").allTextContents();
  await shot(page, "29-audit");

  // --- subscription (read-only) ---------------------------------------------------------------
  await nav(page, "Subscription");
  await page.getByTestId("subscriptions-table").waitFor();
  seen.subscription_limit = (await page.getByTestId("subscription-limit").textContent()).trim();
  seen.subscription_row = await page.getByTestId("subscriptions-table").locator("tbody tr").first().textContent();
  await shot(page, "29b-subscription");

  // --- a gateway's polled devices, pushed from the cloud: a refused set shows its code ----------
  await nav(page, "Gateways");
  await page.getByTestId("gateways-table").getByRole("button", { name: "Polled devices" }).first().click();
  const panel = page.getByTestId("connectors-panel");
  await panel.waitFor();
  const editor = panel.getByLabel("Connector devices (JSON)");
  await editor.fill('[{"id": "ups-7", "kind": "snmp", "host": "10.0.0.7", "profile": "ups-mib", "colour": "red"}]');
  await panel.getByRole("button", { name: "Push to the gateway" }).click();
  await panel.getByRole("alert").waitFor();
  seen.connectors_error = await panel.getByRole("alert").textContent();
  await editor.fill('[{"id": "ups-7", "kind": "snmp", "host": "10.0.0.7", "profile": "ups-mib", "interval_s": 30}]');
  await panel.getByRole("button", { name: "Push to the gateway" }).click();
  await panel.getByText("Set version 1").waitFor();
  seen.connectors_text = await panel.textContent();
  await shot(page, "29c-gateway-connectors");
  step("connector set pushed to a gateway");

  // --- notifications: a channel with "send test"; an on-call schedule's 14-day timeline ------------
  await nav(page, "Notifications");
  const ch = page.getByRole("form", { name: "New channel" });
  await ch.getByLabel("Name").fill("ops-hook");
  await page.getByLabel("Channel config").fill(JSON.stringify({ url: task.hook_url }));
  await ch.getByRole("button", { name: "Add channel" }).click();
  const chRow = page.getByTestId("channels-table").getByRole("row").filter({ hasText: "ops-hook" });
  await chRow.getByRole("button", { name: "Send test" }).click();
  await chRow.getByRole("link", { name: /test sent/ }).click();
  await page.getByTestId("deliveries-table").waitFor();
  // the workers send it to the loopback receiver; the log refreshes itself (every 10 s)
  await page.getByTestId("deliveries-table").locator("tbody tr").first().getByText("delivered").waitFor({ timeout: 30_000 });
  seen.delivery_row = await page.getByTestId("deliveries-table").locator("tbody tr").first().textContent();
  await shot(page, "30-deliveries");
  await nav(page, "On-call");
  await page.getByLabel("Schedule name").fill("primary on-call");
  await page.getByLabel("Rotation").selectOption("daily");
  await page.getByLabel("Members").fill("ana, bo, cy");
  await page.getByRole("button", { name: "Create schedule" }).click(); // nobody has a channel yet: refused
  seen.unreachable_error = await page.getByText("oncall.member_unreachable").first().textContent();
  for (const who of ["ana", "bo", "cy"]) await page.getByLabel(`Channel for ${who}`).selectOption({ label: `${who}: ops-hook (webhook)` });
  await page.getByRole("button", { name: "Create schedule" }).click();
  await page.waitForFunction(() => {
    const p = document.querySelector('[data-testid="oncall-timeline"]')?.dataset.probe;
    return p && JSON.parse(p).bars > 0;
  });
  seen.timeline = JSON.parse(await page.getByTestId("oncall-timeline").getAttribute("data-probe"));
  // who is on call now is a query of its own: wait for its answer, not the placeholder
  await page.waitForFunction(() => !["", "…"].includes(document.querySelector('[data-testid="oncall-now"]')?.textContent ?? ""));
  seen.oncall_now = await page.getByTestId("oncall-now").textContent();
  await shot(page, "31-oncall");
  step("channel tested, schedule drawn");

  // --- an operator: NOC with a live event, TV mode, health matrix, every tenant's alerts -------------
  const ops = await browser.newPage();
  watch(ops, "operator");
  await login(ops, task.operator_email);
  seen.operator_nav = await ops.getByRole("navigation", { name: "Main" }).getByRole("link").allTextContents();
  await ops.getByTestId("noc-gauges").waitFor();
  await ops.getByTestId("live-state").filter({ hasText: "live" }).waitFor();
  await ops.evaluate(() => (window.__pulseNoReload = true));
  seen.live_event_status = await ingest([{ v: 1, metrics: { [task.metric]: 42 } }]);
  await ops.getByTestId("event-feed").getByText(task.device_id).first().waitFor();
  seen.feed_row = await ops.getByTestId("event-feed").locator("tbody tr").first().textContent();
  seen.ops_no_reload = await ops.evaluate(() => window.__pulseNoReload === true);
  seen.gauge_online = await ops.getByTestId("gauge-online").getAttribute("data-probe");
  await shot(ops, "32-noc");
  await ops.keyboard.press("t");
  await ops.waitForFunction(() => document.body.classList.contains("tv"));
  seen.tv = await ops.evaluate(() => ({ theme: document.documentElement.dataset.theme, nav: getComputedStyle(document.querySelector(".nav")).display }));
  await shot(ops, "33-noc-tv");
  await ops.keyboard.press("Escape");
  await ops.waitForFunction(() => !document.body.classList.contains("tv"));
  await ops.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Tenant health" }).click();
  const healthRow = ops.getByTestId("health-matrix").getByRole("row").filter({ hasText: task.a_slug });
  await healthRow.waitFor();
  seen.health_row = await healthRow.locator("td").allTextContents();
  await shot(ops, "34-health");
  await ops.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "All alerts" }).click();
  await ops.getByTestId("op-alerts-table").getByText(task.a_slug).first().waitFor();
  seen.op_alert_row = await ops.getByTestId("op-alerts-table").locator("tbody tr").first().textContent();
  step("operator views");
} catch (e) {
  await failed(e);
} finally {
  await close();
}
seen.console_errors = seen.console_errors.filter((e) => !e.includes("409 (Conflict)") && !e.includes("422 (Unprocessable"));
process.stdout.write(JSON.stringify(seen));
