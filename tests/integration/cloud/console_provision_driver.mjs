// Drives provisioning in Chromium: the 4-step wizard (identity -> site and tags -> the rules that
// will watch the device -> the device and its token, shown once); the CSV import's preview with the
// browser's row errors, then the server's (a device id that exists, the subscription's device limit),
// then an import that goes through and its tokens; activation codes made, shown once, and revoked.
// Task on stdin, observations as JSON on stdout.
import { launch, readTask, stepper } from "./console_browser.mjs";

const task = await readTask();
const seen = { console_errors: [], steps: [] };
const step = stepper(seen);
const { browser, close, watch, shot, login, failed } = await launch(task, seen);
const nav = (page, name) => page.getByRole("navigation", { name: "Main" }).getByRole("link", { name, exact: true }).click();

try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  watch(page, "admin");
  page.on("dialog", (d) => d.accept());
  await login(page, task.email);

  // --- the wizard ---------------------------------------------------------------------------
  await nav(page, "Devices");
  await page.getByRole("link", { name: "Provision…" }).click();
  await page.getByLabel("Device id").fill("bad id!");
  seen.wizard_bad_id = await page.getByRole("alert").textContent();
  seen.next_disabled = await page.getByRole("button", { name: "Next" }).isDisabled();
  await page.getByLabel("Device id").fill("wiz-1");
  await page.getByLabel("Device name").fill("Boiler room sensor");
  await shot(page, "provision-10-identity");
  await page.getByRole("button", { name: "Next" }).click();
  await page.getByLabel("Site", { exact: true }).selectOption({ label: "North" });
  await page.getByLabel("Tags", { exact: true }).fill("floor=2 hvac");
  await shot(page, "provision-20-site-tags");
  await page.getByRole("button", { name: "Next" }).click();
  seen.rules_watching = await page.getByTestId("rules-watching").textContent();
  await shot(page, "provision-30-rules");
  await page.getByRole("button", { name: "Next" }).click();
  await page.getByRole("button", { name: "Create device and token" }).click();
  seen.wizard_token = await page.getByTestId("secret-token").textContent();
  await shot(page, "provision-40-token-once");
  step("wizard done");

  // --- CSV import -----------------------------------------------------------------------------
  await nav(page, "Devices");
  await page.getByRole("link", { name: "Import CSV" }).click();
  const csv = page.getByLabel("CSV text");
  await csv.fill("device_id,name,site,tags,status\nok-1,One,,,\nbad id,,,,\nok-1,,,,\nx-2,,South,,\nx-3,,,,broken\n");
  seen.preview_summary = await page.getByTestId("import-summary").textContent();
  seen.preview_rows = await page.getByTestId("import-preview").locator("tbody tr").allTextContents();
  seen.import_disabled = await page.getByRole("button", { name: /^Import / }).isDisabled();
  await shot(page, "provision-50-import-preview-errors");
  step("browser preview");

  await csv.fill("device_id,name,site,tags,status\ntaken-1,,,,\nimp-2,,North,floor=2,active\n");
  await page.getByRole("button", { name: /^Import / }).click();
  await page.getByText("the server refused 1 row(s)").waitFor();
  seen.server_rows = await page.getByTestId("import-preview").locator("tbody tr").allTextContents();
  await shot(page, "provision-60-import-server-errors");
  step("server row errors");

  await csv.fill("device_id\nimp-a\nimp-b\nimp-c\n");
  await page.getByRole("button", { name: /^Import / }).click();
  seen.limit = await page.getByRole("alert").first().textContent();
  await shot(page, "provision-70-import-device-limit");
  step("device limit");

  await csv.fill("device_id,name\nimp-a,Imported A\n");
  await page.getByRole("button", { name: /^Import / }).click();
  seen.imported = await page.getByTestId("import-done").textContent();
  await page.getByRole("button", { name: "Make a token for each" }).click();
  seen.import_tokens = await page.getByTestId("import-tokens").textContent();
  await shot(page, "provision-80-import-tokens");
  step("imported with tokens");

  // --- activation codes -----------------------------------------------------------------------
  await nav(page, "Activation codes");
  const form = page.getByRole("form", { name: "New activation codes" });
  await form.getByLabel("How many").fill("3");
  await form.getByLabel("Site", { exact: true }).selectOption({ label: "North" });
  await form.getByLabel("Tags", { exact: true }).fill("floor=2");
  await form.getByRole("button", { name: "Make codes" }).click();
  seen.codes = (await page.getByTestId("activation-codes").textContent()).split("\n");
  await shot(page, "provision-90-activation-codes-once");
  await page.getByRole("button", { name: "I have stored them" }).click();
  await page.getByTestId("code-unused").first().getByRole("button", { name: "Revoke", exact: true }).click();
  await page.getByTestId("code-revoked").waitFor();
  seen.code_states = await page.getByTestId("activation-table").locator("tbody tr td:nth-child(5)").allTextContents();
  await shot(page, "provision-95-activation-codes-list");
  step("activation codes");
  process.stdout.write(JSON.stringify(seen));
} catch (e) {
  await failed(e);
} finally {
  await close();
}
