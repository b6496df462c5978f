// Drives Debian's Chromium through the console with playwright-core (never a downloaded browser).
// Reads its task as JSON on stdin, prints one JSON object of what it saw on stdout; the pytest test
// (test_console_browser.py) makes the world beforehand and judges the observations afterwards.
// Throws (exit code 1, message on stderr) when a step cannot happen at all.
import { launch, readTask, stepper } from "./console_browser.mjs";

const task = await readTask();
const seen = { console_errors: [], steps: [] };
const step = stepper(seen);
const { browser, close, watch, shot, login, failed } = await launch(task, seen);
const chart = (page) => page.getByTestId("telemetry-chart");
const chartPoints = async (page) => JSON.parse((await chart(page).getAttribute("data-points")) || "[]");

try {
  // --- tenant A's admin ---------------------------------------------------------------------
  const page = browser.pages()[0] ?? (await browser.newPage());
  watch(page, "a");
  // a wrong password first: a clear message, still on the login page
  await page.goto(task.base + "/app/");
  await page.getByLabel("Email").fill(task.a_email);
  await page.getByLabel("Password").fill("not the password");
  await page.getByRole("button", { name: "Log in" }).click();
  seen.bad_login = await page.getByRole("alert").textContent();
  await shot(page, "00-login-refused");
  await login(page, task.a_email);
  step("logged in");
  await page.getByTestId("kpi-sites").waitFor();
  seen.kpi_active = Number(await page.getByTestId("kpi-active").textContent());
  seen.kpi_provisioned = Number(await page.getByTestId("kpi-provisioned").textContent());
  await shot(page, "01-overview");

  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Devices" }).click();
  await page.getByTestId("devices-table").waitFor();
  const ids = () => page.getByTestId("devices-table").locator("tbody tr td:first-child").allTextContents();
  seen.page1 = await ids();
  await page.getByRole("button", { name: "Next →" }).click();
  await page.getByText("Page 2 ·").waitFor();
  await page.waitForFunction(() => document.querySelector('[data-testid="devices-table"]')?.getAttribute("aria-busy") === "false");
  seen.page2 = await ids();
  await page.getByLabel("Search devices").fill(task.device_id);
  await page.waitForURL(/q=/);
  // the search narrows the list to the one device (or this times out)
  await page.waitForFunction(() => document.querySelectorAll('[data-testid="devices-table"] tbody tr').length === 1);
  seen.device_rows = await page.getByTestId("devices-table").locator("tbody tr").count();
  await shot(page, "02-devices");
  await page.getByRole("link", { name: task.device_id }).click();
  step("device opened");
  await page.getByLabel("Metric").selectOption(task.metric);
  await page.waitForURL(new RegExp(`metric=${task.metric}`));

  // the chart holds the history the server bucketed
  // (read in the same moment as the check: until React has drawn the chosen metric, the chart still
  // holds the previous one's points, and then none while the new series loads)
  const drawn = await page.waitForFunction(
    ([n, metric]) => {
      const d = document.querySelector('[data-testid="telemetry-chart"]')?.dataset;
      return d && d.metric === metric && Number(d.pointCount) >= n ? d.points : false;
    },
    [task.history_points, task.metric],
  );
  seen.history = JSON.parse(await drawn.jsonValue());
  await page.getByTestId("live-state").filter({ hasText: "live" }).waitFor();
  await page.evaluate(() => (window.__pulseNoReload = true));
  await shot(page, "03-device");
  step("history drawn, live socket ready");

  // a new reading through the real HTTP ingest shows up without a reload
  const r = await fetch(task.base + "/ingest/v1/telemetry", {
    method: "POST",
    headers: { Authorization: `Bearer ${task.device_token}`, "Content-Type": "application/json" },
    body: JSON.stringify({ v: 1, ts: task.live_ts, metrics: { [task.metric]: task.live_value } }),
  });
  seen.live_ingest_status = r.status;
  await page.waitForFunction(
    (v) => JSON.parse(document.querySelector('[data-testid="telemetry-chart"]')?.dataset.points || "[]").some((p) => p[1] === v),
    task.live_value,
  );
  seen.after_live = await chartPoints(page);
  seen.no_reload = await page.evaluate(() => window.__pulseNoReload === true);
  await shot(page, "04-device-live");
  step("live point arrived");

  // edit the device's properties
  await page.getByRole("button", { name: "Edit", exact: true }).click();
  await page.getByRole("form", { name: "Edit device" }).getByLabel("Name").fill(task.device_name);
  await shot(page, "05a-device-edit");
  await page.getByRole("button", { name: "Save" }).click();
  await page.getByRole("heading", { name: task.device_name }).waitFor();
  step("device renamed");

  // credentials: the secret is shown once
  await page.getByRole("button", { name: "Issue token" }).click();
  seen.issued_token = (await page.getByTestId("secret-token").textContent()).trim();
  await shot(page, "05-credential-issued");
  await page.getByRole("button", { name: "I have stored it" }).click();
  await page.getByTestId("secret-token").waitFor({ state: "detached" });
  seen.credential_rows = await page.getByTestId("credentials").locator("tbody tr").count();
  // rotate the first credential (the one the device was made with): a new secret, shown once
  page.on("dialog", (d) => d.accept());
  const first = page.getByTestId("credentials").locator("tbody tr").first();
  await first.getByRole("button", { name: "Rotate" }).click();
  seen.rotated_token = (await page.getByTestId("secret-token").textContent()).trim();
  await page.getByRole("button", { name: "I have stored it" }).click();
  // revoke the one issued above
  const second = page.getByTestId("credentials").locator("tbody tr").nth(1);
  await second.getByRole("button", { name: "Revoke" }).click();
  await second.getByText("revoked").waitFor();
  seen.credential_states = await page.getByTestId("credentials").locator("tbody tr td:nth-child(4)").allTextContents();
  step("credentials issued, rotated, revoked");

  // dark theme
  await page.getByRole("button", { name: "Toggle dark theme" }).click();
  seen.theme = await page.evaluate(() => document.documentElement.dataset.theme);
  await shot(page, "06-device-dark");

  // sites: create one through the UI
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Sites" }).click();
  await page.getByLabel("Site name").fill(task.site_name);
  await page.getByLabel("Address").fill("1 Harbour Road");
  await page.getByRole("button", { name: "Add site" }).click();
  await page.getByTestId("sites-table").getByText(task.site_name).waitFor();
  // edit it, then add a second one and delete that
  await page.getByTestId("sites-table").getByRole("row").filter({ hasText: task.site_name }).getByRole("button", { name: "Edit" }).click();
  await page.getByRole("form", { name: "Save" }).getByLabel("Address").fill("2 Harbour Road");
  await page.getByRole("button", { name: "Save" }).click();
  await page.getByTestId("sites-table").getByText("2 Harbour Road").waitFor();
  await page.getByLabel("Site name").fill("Spare yard");
  await page.getByRole("button", { name: "Add site" }).click();
  const spare = page.getByTestId("sites-table").getByRole("row").filter({ hasText: "Spare yard" });
  await spare.waitFor();
  await shot(page, "07-sites-dark");
  await spare.getByRole("button", { name: "Delete" }).click();
  await spare.waitFor({ state: "detached" });
  step("sites created, edited, deleted");

  // --- tenant B's user opens A's device by its URL: 404 ----------------------------------------
  const other = await browser.newPage(); // a new tab: its own sessionStorage, so its own session
  watch(other, "b");
  await login(other, task.b_email);
  // spoil the access token: the console must renew it with the refresh token, not log out
  const before = await other.evaluate(() => JSON.parse(sessionStorage.getItem("pulse.session")));
  await other.evaluate(() => {
    const s = JSON.parse(sessionStorage.getItem("pulse.session"));
    sessionStorage.setItem("pulse.session", JSON.stringify({ ...s, access: "spoiled" }));
  });
  await other.goto(`${task.base}/app/devices/${task.device}`);
  await other.getByTestId("not-found").waitFor();
  seen.b_not_found_text = await other.getByTestId("not-found").textContent();
  seen.b_chart_count = await other.getByTestId("telemetry-chart").count();
  seen.b_nav = await other.getByRole("navigation", { name: "Main" }).getByRole("link").allTextContents();
  const after = await other.evaluate(() => JSON.parse(sessionStorage.getItem("pulse.session")));
  seen.b_session_renewed = after.access !== "spoiled" && after.refresh !== before.refresh;
  await shot(other, "08-other-tenant-404");
  step("cross-tenant 404 seen");

  // --- an operator: operator pages only, no tenant's ---------------------------------------------------
  const ops = await browser.newPage();
  watch(ops, "operator");
  await login(ops, task.operator_email);
  await ops.getByTestId("noc").waitFor(); // an operator lands on the NOC view
  await ops.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Tenants", exact: true }).click();
  await ops.getByRole("table").getByText(task.a_slug).waitFor();
  seen.operator_nav = await ops.getByRole("navigation", { name: "Main" }).getByRole("link").allTextContents();
  seen.operator_tenant_row = await ops.getByRole("row").filter({ hasText: task.a_slug }).textContent();
  await shot(ops, "09-operator-tenants");
  step("operator sees tenants");
} catch (e) {
  await failed(e); // a screenshot of every tab and what the pages logged, then the error again
} finally {
  await close();
}
// 404s and 401s the test provoked on purpose are logged by Chromium as console errors; keep the rest
seen.console_errors = seen.console_errors.filter((e) => !e.includes("404 (Not Found)") && !e.includes("401 (Unauthorized)"));
process.stdout.write(JSON.stringify(seen));
