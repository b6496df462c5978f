// Drives the operator's platform pages in Chromium: the NOC's pipeline strip, trend charts and
// alert heatmap with the live feed paused and resumed, tenant sparklines, the System page, and the
// operator audit log (operator-admin only). Task on stdin, observations as JSON on stdout
// (see test_platform_browser.py).
import { launch, readTask, stepper } from "./console_browser.mjs";

const task = await readTask();
const seen = { console_errors: [], steps: [] };
const step = stepper(seen);
const { browser, close, watch, shot, login, failed } = await launch(task, seen);
const ingest = (messages) =>
  fetch(task.base + "/ingest/v1/telemetry", {
    method: "POST",
    headers: { Authorization: `Bearer ${task.device_token}`, "Content-Type": "application/json" },
    body: JSON.stringify(messages),
  }).then((r) => r.status);
const nav = (page, name) => page.getByRole("navigation", { name: "Main" }).getByRole("link", { name, exact: true }).click();
const probe = async (page, id) => JSON.parse((await page.getByTestId(id).getAttribute("data-probe")) || "null");

try {
  const ops = browser.pages()[0] ?? (await browser.newPage());
  watch(ops, "operator-admin");
  await login(ops, task.admin_email);
  seen.nav = await ops.getByRole("navigation", { name: "Main" }).getByRole("link").allTextContents();
  await ops.getByTestId("topology").waitFor();
  await ops.getByTestId("alert-heatmap").waitFor();
  await ops.waitForFunction(() => document.querySelector('[data-testid="chart-messages"]')?.dataset.probe?.includes("points"));
  seen.stages = await ops.getByTestId("topology").locator("[data-status]").evaluateAll((els) =>
    els.map((e) => ({ id: e.dataset.testid, status: e.dataset.status, text: e.textContent })),
  );
  seen.messages = await probe(ops, "chart-messages");
  seen.device_states = await probe(ops, "chart-device-states");
  seen.delivery = await probe(ops, "chart-delivery-queue");
  seen.heatmap = await probe(ops, "alert-heatmap");
  step("noc drawn");
  // the feed: pause holds new events back, resume lets the next ones in
  await ops.getByTestId("live-state").filter({ hasText: "live" }).waitFor();
  await ops.getByTestId("feed-pause").click();
  seen.paused_ingest = await ingest([{ v: 1, metrics: { temp: 40 } }]);
  await ops.getByTestId("feed-count").filter({ hasText: "1 held while paused" }).waitFor();
  seen.rows_while_paused = await ops.getByTestId("event-feed").count();
  await shot(ops, "platform-40-noc-paused");
  await ops.getByTestId("feed-pause").click();
  seen.resumed_ingest = await ingest([{ v: 1, metrics: { temp: 41 } }]);
  await ops.getByTestId("event-feed").getByText(task.device_id).first().waitFor();
  seen.rows_after_resume = await ops.getByTestId("event-feed").locator("tbody tr").count();
  await ops.getByRole("group", { name: "Range" }).getByRole("button", { name: "last day" }).click();
  await ops.waitForFunction(() => document.querySelector('[data-testid="chart-messages"]')?.dataset.probe?.includes("points"));
  seen.messages_day = await probe(ops, "chart-messages");
  await shot(ops, "platform-41-noc");
  step("feed paused and resumed");

  await nav(ops, "Tenant health");
  const spark = ops.getByTestId(`spark-alerts-${task.slug}`).locator("svg");
  await spark.waitFor();
  seen.spark_alerts = await spark.getAttribute("data-values");
  seen.spark_readings = await ops.getByTestId(`spark-readings-${task.slug}`).locator("svg").getAttribute("data-values");
  await shot(ops, "platform-42-tenant-health");
  step("sparklines");

  await nav(ops, "System");
  await ops.getByTestId("workers").waitFor();
  await ops.getByTestId("capacity").waitFor();
  seen.workers = await ops.getByTestId("workers").locator("tbody tr").allTextContents();
  seen.capacity = await ops.getByTestId("capacity").locator(".kpi").allTextContents();
  await ops.waitForFunction(() => document.querySelector('[data-testid="chart-gateway-backlog"]')?.dataset.probe?.includes("points"));
  seen.backlog_chart = await probe(ops, "chart-gateway-backlog");
  await shot(ops, "platform-43-system");
  step("system page");

  await nav(ops, "Operator audit");
  await ops.getByTestId("operator-audit").waitFor();
  await ops.getByLabel("Action").fill("system.");
  await ops.getByRole("button", { name: "Filter" }).click();
  await ops.waitForFunction(() => {
    const rows = [...document.querySelectorAll('[data-testid="operator-audit"] tbody tr')];
    return rows.length > 0 && rows.every((r) => r.textContent.includes("system."));
  });
  seen.audit_rows = await ops.getByTestId("operator-audit").locator("tbody tr").allTextContents();
  await shot(ops, "platform-44-operator-audit");
  step("operator audit");

  // a plain operator has the System page but not the operator audit log
  const plain = await browser.newPage();
  watch(plain, "operator");
  await login(plain, task.operator_email);
  seen.operator_nav = await plain.getByRole("navigation", { name: "Main" }).getByRole("link").allTextContents();
  step("plain operator");
} catch (e) {
  await failed(e);
} finally {
  await close();
}
process.stdout.write(JSON.stringify(seen));
