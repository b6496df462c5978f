// Drives the console's Jobs page in Chromium: the firmware library, a new desired-state job made
// from a tag selection (the preview counts the devices), its live progress while the devices report
// (canary, then the rest), the stage chart, a rollback; then a command job whose canary fails and
// is aborted with the reason shown. Task on stdin, observations as JSON on stdout.
import { launch, readTask, stepper } from "./console_browser.mjs";

const task = await readTask();
const seen = { console_errors: [], steps: [] };
const step = stepper(seen);
const { browser, close, watch, shot, login, failed } = await launch(task, seen);

const api = async (path, { method = "GET", body } = {}) => {
  const r = await fetch(task.base + path, {
    method,
    headers: { Authorization: `Bearer ${task.token}`, ...(body ? { "Content-Type": "application/json" } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  return r.json();
};
const say = (device, messages) =>
  fetch(task.base + "/ingest/v1/telemetry", {
    method: "POST",
    headers: { Authorization: `Bearer ${task.tokens[device]}`, "Content-Type": "application/json" },
    body: JSON.stringify(messages.map((m, i) => ({ v: 1, ts: Date.now() + i, ...m }))),
  }).then((r) => r.status);
const until = async (what, fn, limitMs = 30_000) => {
  const end = Date.now() + limitMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 150));
  }
};
// the devices: each one that has been started reports what it was asked (or answers its command)
const answer = async (jobId, reply) => {
  const job = await api(`/api/v1/jobs/${jobId}`);
  for (const d of job.devices.filter((x) => x.outcome === "in_progress")) await reply(d);
  return job;
};

try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  watch(page, "admin");
  await login(page, task.email);
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Jobs", exact: true }).click();
  await page.getByTestId("firmware-table").waitFor();
  seen.firmware_rows = await page.getByTestId("firmware-table").locator("tbody tr").allTextContents();
  step("jobs page with the firmware library");

  await page.getByRole("button", { name: "New job" }).click();
  const form = page.getByRole("form", { name: "New job" });
  await form.getByLabel("Name").fill("reporting every 30 s");
  await form.getByLabel("Tags (all of)").fill("ups");
  await until("the preview", async () => (await page.getByTestId("job-preview").textContent()).includes(`${task.devices.length} devices`));
  seen.preview = await page.getByTestId("job-preview").textContent();
  await form.getByLabel("Patch (JSON)").fill('{"interval_s": 30}');
  await form.getByLabel("Canary (devices)").fill("1");
  await form.getByLabel("Batch size (0: the rest at once)").fill("0");
  await shot(page, "jobs-10-new-job");
  await page.getByRole("button", { name: "Start job" }).click();
  await page.getByTestId("job-state").waitFor();
  const jobId = page.url().split("/jobs/")[1];
  seen.job_id = jobId;
  step("desired job started");

  // the canary reports; the page moves on by itself (no reload)
  await until("the canary started", async () => (await answer(jobId, async () => {})).progress.in_progress === 1);
  await answer(jobId, (d) => say(d.device, [{ type: "twin_reported", body: { interval_s: 30 } }]));
  await until("the canary done on the page", async () => (await page.getByTestId("job-counts").textContent()).includes("1 succeeded"));
  await shot(page, "jobs-20-canary-done");
  seen.live_counts = await page.getByTestId("job-counts").textContent();
  await until("every device done", async () => {
    const job = await answer(jobId, (d) => say(d.device, [{ type: "twin_reported", body: { interval_s: 30 } }]));
    return job.state === "completed";
  });
  await until("completed on the page", async () => (await page.getByTestId("job-state").textContent()) === "completed");
  seen.final_counts = await page.getByTestId("job-counts").textContent();
  seen.stage_probe = JSON.parse(await page.getByTestId("job-stages").getAttribute("data-probe"));
  await shot(page, "jobs-30-completed");
  step("desired job completed");

  await page.getByRole("button", { name: "Roll back" }).click();
  await until("the rollback job's page", async () => page.url().split("/jobs/")[1] !== jobId);
  seen.rollback_id = page.url().split("/jobs/")[1];
  await page.getByRole("heading", { name: /rollback of/ }).waitFor();
  await shot(page, "jobs-40-rollback");
  step("rolled back");

  // a command job whose canary fails: aborted before the next stage, with the reason
  const cmd = await api("/api/v1/jobs", { method: "POST", body: {
    name: "reboot the UPS fleet", target: { tags: ["ups"] }, action: { kind: "command", name: "reboot" },
    rollout: { canary: 2, abort_percent: 20 },
  } });
  await until("the canary's commands", async () => (await answer(cmd.id, async () => {})).progress.in_progress === 2);
  await answer(cmd.id, (d) => say(d.device, [{ type: "command_ack", body: { id: d.command, status: "failed", error: "battery below 40 %" } }]));
  await page.goto(`${task.base}/app/jobs/${cmd.id}`);
  await until("aborted on the page", async () => (await page.getByTestId("job-state").textContent()) === "aborted", 40_000);
  seen.abort_reason = await page.getByTestId("job-reason").textContent();
  seen.failed_reasons = await page.getByTestId("job-devices").getByText("battery below 40 %").count();
  await shot(page, "jobs-50-aborted");
  await page.getByRole("navigation", { name: "Main" }).getByRole("link", { name: "Jobs", exact: true }).click();
  await page.getByTestId("jobs-table").waitFor();
  seen.job_rows = await page.getByTestId("jobs-table").locator("tbody tr").count();
  await shot(page, "jobs-60-list");
  step("aborted job shown");
} catch (e) {
  await failed(e);
} finally {
  await close();
}
process.stdout.write(JSON.stringify(seen));
