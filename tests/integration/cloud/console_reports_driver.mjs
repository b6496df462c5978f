// Drives the console's Reports page and the device chart's long ranges in Chromium: the device's
// 1 y chart drawn from the archive's daily rollups, the 30 d chart from hourly ones; the SLA card
// with its figures and chart; a streamed export downloaded with its progress; the report history,
// and a stored run opened from it. Task on stdin, observations as JSON on stdout.
import { launch, readTask, stepper } from "./console_browser.mjs";

const task = await readTask();
const seen = { console_errors: [], steps: [] };
const step = stepper(seen);
const { browser, close, watch, shot, login, failed } = await launch(task, seen);
const nav = (page, name) => page.getByRole("navigation", { name: "Main" }).getByRole("link", { name, exact: true }).click();

try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  watch(page, "a");
  await login(page, task.email);
  step("logged in");

  // --- the device chart: a year from daily rollups, 30 days from hourly ones --------------------
  await page.goto(`${task.base}/app/devices/${task.device}?metric=kw&range=1y`);
  const chart = page.locator("[data-point-count]");
  await page.waitForFunction(() => Number(document.querySelector("[data-point-count]")?.dataset.pointCount ?? 0) > 0);
  seen.year_points = JSON.parse(await chart.getAttribute("data-points"));
  seen.year_note = await page.getByText(/rollups/).first().textContent();
  await shot(page, "60-device-chart-1y");
  step("1y chart");
  await page.getByRole("group", { name: "Range" }).getByRole("button", { name: "30d", exact: true }).click();
  await page.waitForFunction(() => document.body.textContent.includes("hourly rollups"));
  await page.waitForFunction(() => Number(document.querySelector("[data-point-count]")?.dataset.pointCount ?? 0) > 0);
  seen.month_points = JSON.parse(await chart.getAttribute("data-points"));
  step("30d chart");

  // --- reports: SLA card, export with progress, history, a stored run --------------------------
  await nav(page, "Reports");
  await page.getByTestId("sla-card").waitFor();
  seen.online = await page.getByTestId("sla-online").textContent();
  seen.mttr = await page.getByTestId("sla-mttr").textContent();
  seen.top_devices = await page.getByTestId("sla-card").locator("table").first().locator("td:first-child").allTextContents();
  seen.sla_probe = JSON.parse(await page.getByTestId("sla-chart").getAttribute("data-probe"));
  await shot(page, "61-reports-sla");
  step("sla card");
  const download = page.waitForEvent("download");
  await page.getByRole("button", { name: "devices.csv" }).click();
  const file = await download;
  seen.download_name = file.suggestedFilename();
  seen.download_progress = await page.getByTestId("progress-devices-csv").textContent();
  step("export downloaded");
  await page.reload();
  await page.getByTestId("report-runs").waitFor();
  seen.history = await page.getByTestId("report-runs").locator("tbody tr").allTextContents();
  await page.getByTestId("report-runs").getByRole("link", { name: /SLA report \(daily\)/ }).first().click();
  await page.getByText(/requested by the daily schedule/).waitFor();
  seen.stored_online = await page.getByTestId("sla-online").textContent();
  await shot(page, "62-reports-stored-run");
  step("stored run");
} catch (e) {
  await failed(e);
} finally {
  await close();
}
process.stdout.write(JSON.stringify(seen));
