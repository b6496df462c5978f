// Drives the device-state and quarantine pages in Chromium (issue 18, part B): the overview's
// "offline" figure opens the devices list filtered by that state; the state filter and sort; the
// device page's uptime strip (24 h and 7 d); the quarantine page with a raw payload that looks like
// HTML shown as text, filtered by code, and a re-submission refused (no device) then accepted once
// the device is registered. Task on stdin, observations as JSON on stdout (test_console_state_browser.py).
import { launch, readTask, stepper } from "./console_browser.mjs";

const task = await readTask();
const seen = { console_errors: [], steps: [] };
const step = stepper(seen);
const { browser, close, watch, shot, login, failed } = await launch(task, seen);
const nav = (page, name) => page.getByRole("navigation", { name: "Main" }).getByRole("link", { name, exact: true }).click();
const rows = async (page, testid) => {
  await page.getByTestId(testid).waitFor();
  await page.waitForFunction((id) => document.querySelector(`[data-testid=${id}]`)?.getAttribute("aria-busy") !== "true", testid);
  return page.getByTestId(testid).locator("tbody tr").evaluateAll((trs) => trs.map((tr) => tr.querySelector("td code")?.textContent ?? ""));
};

try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  watch(page, "a");
  await login(page, task.a_email);
  step("logged in");

  // --- overview -> devices filtered by state ------------------------------------------------------
  seen.kpi_offline = await page.getByTestId("kpi-offline").textContent();
  seen.kpi_never_seen = await page.getByTestId("kpi-never_seen").textContent();
  await page.getByTestId("kpi-offline").click();
  await page.waitForURL(/\/devices\?state=offline/);
  seen.offline_url = new URL(page.url()).search;
  await page.waitForFunction(() => document.querySelectorAll("[data-testid=devices-table] tbody tr").length === 1);
  seen.offline_rows = await rows(page, "devices-table");
  seen.offline_state_cells = await page.getByTestId("device-state").allTextContents();
  await shot(page, "40-devices-offline");
  await page.getByLabel("State").selectOption("never_seen");
  await page.waitForURL(/state=never_seen/);
  await page.waitForFunction(() => [...document.querySelectorAll("[data-testid=devices-table] tbody tr td code")].map((c) => c.textContent).join() === "spare");
  seen.never_rows = await rows(page, "devices-table");
  await page.getByLabel("State").selectOption("");
  await page.getByLabel("Sort").selectOption("state");
  await page.waitForURL(/sort=state/);
  await page.waitForFunction(() => document.querySelectorAll("[data-testid=devices-table] tbody tr").length === 3);
  seen.sorted_rows = await rows(page, "devices-table");
  step("devices by state");

  // --- device page: the uptime strip ------------------------------------------------------------
  await page.getByRole("link", { name: task.silent_id }).click();
  await page.getByTestId("uptime-strip").waitFor();
  seen.device_state = await page.getByTestId("device-state").first().textContent();
  seen.strip_24h = await page.getByTestId("uptime-strip").locator(".uptime-seg").evaluateAll((s) => s.map((e) => [e.dataset.status, parseFloat(e.style.width)]));
  seen.summary_24h = await page.getByTestId("uptime-summary").textContent();
  await shot(page, "41-uptime-24h");
  await page.getByRole("button", { name: "7 d" }).click();
  await page.waitForFunction(() => {
    const first = document.querySelector("[data-testid=uptime-strip] .uptime-seg"); // null while the 7 d answer loads
    return first !== null && parseFloat(first.style.width) > 90;
  });
  seen.strip_7d = await page.getByTestId("uptime-strip").locator(".uptime-seg").evaluateAll((s) => s.map((e) => [e.dataset.status, parseFloat(e.style.width)]));
  await shot(page, "42-uptime-7d");
  step("uptime strip");

  // --- quarantine ---------------------------------------------------------------------------------
  await nav(page, "Quarantine");
  await page.getByTestId("quarantine-table").waitFor();
  seen.quarantine_rows = await page.getByTestId("quarantined").count();
  seen.raw_texts = await page.getByTestId("raw").allTextContents();
  seen.injected_elements = await page.locator("[data-testid=raw] img, [data-testid=raw] script").count();
  seen.xss_fired = await page.evaluate(() => window.__pwned === true);
  await shot(page, "43-quarantine");
  await page.getByLabel("Code").fill("sync.unknown_device");
  await page.getByLabel("Code").press("Enter");
  await page.waitForURL(/code=sync.unknown_device/);
  await page.waitForFunction(() => document.querySelectorAll("[data-testid=quarantined]").length === 1);
  const row = page.getByTestId("quarantined");
  await row.getByRole("button", { name: "Re-submit" }).click();
  seen.refused_outcome = await row.getByTestId("resubmit-outcome").textContent();
  const r = await fetch(task.base + "/api/v1/devices", {
    method: "POST",
    headers: { Authorization: `Bearer ${task.a_token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ device_id: task.unknown_id }),
  });
  seen.registered = r.status;
  await row.getByRole("button", { name: "Re-submit" }).click();
  await row.getByTestId("resubmitted").waitFor();
  seen.resubmitted = await row.getByTestId("resubmitted").textContent();
  await shot(page, "44-quarantine-resubmitted");
  step("quarantine");

  // --- maintenance windows ------------------------------------------------------------------------
  await nav(page, "Maintenance");
  const mw = page.getByRole("form", { name: "New maintenance window" });
  await mw.getByLabel("Device id").fill(task.silent_id);
  await mw.getByLabel("Starts").fill("2099-01-01T12:00");
  await mw.getByLabel("Ends").fill("2099-01-01T08:00");
  await mw.getByLabel("Reason").fill("pump swap");
  await mw.getByRole("button", { name: "Add window" }).click();
  seen.window_refused = await page.getByText("api.invalid").first().textContent();
  await mw.getByLabel("Ends").fill("2099-01-01T16:00");
  await mw.getByRole("button", { name: "Add window" }).click();
  await page.getByTestId("maintenance-window").first().waitFor();
  seen.window_rows = await page.getByTestId("maintenance-window").allTextContents();
  await shot(page, "45-maintenance");
  await page.getByTestId("maintenance-window").getByRole("button", { name: "End" }).click();
  await page.getByText("No maintenance windows now or ahead.").waitFor();
  seen.windows_after_end = await page.getByTestId("maintenance-window").count();
  step("maintenance");
} catch (e) {
  await failed(e);
} finally {
  await close();
}
seen.console_errors = seen.console_errors.filter((e) => !e.includes("409 (Conflict)") && !e.includes("422 (Unprocessable"));
process.stdout.write(JSON.stringify(seen));
