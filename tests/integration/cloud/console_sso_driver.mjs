// Drives single sign-on in Chromium: the sign-in page offers the provider's button, the provider's
// own form (oidc-provider-mock) is filled in, and the console opens signed in with the tenant and
// role the claims gave; a refused sign-in comes back to the sign-in page with its reason.
// Task on stdin, observations as JSON on stdout.
import { launch, readTask, stepper } from "./console_browser.mjs";

const task = await readTask();
const seen = { console_errors: [], steps: [], our_errors: [], provider_errors: [] };
const step = stepper(seen);
const { browser, close, watch, shot, failed } = await launch(task, seen);

try {
  const page = browser.pages()[0] ?? (await browser.newPage());
  watch(page, "sso");
  // the provider's own page fetches things from the internet (unreachable here): keep its errors apart
  page.on("console", (m) => {
    if (m.type() !== "error") return;
    const url = m.location().url || page.url();
    (url.startsWith(task.base) ? seen.our_errors : seen.provider_errors).push(`${url}: ${m.text()}`);
  });
  page.on("pageerror", (e) => seen.our_errors.push(`pageerror: ${e.message}`));
  await page.goto(task.base + "/app/devices");
  const button = page.getByTestId("sso");
  seen.button = await button.textContent();
  await shot(page, "sso-10-sign-in-page");
  await button.click();
  await page.getByPlaceholder("sub").waitFor();
  seen.provider_url = page.url();
  await page.getByPlaceholder("sub").fill(task.sub);
  await shot(page, "sso-20-provider-form");
  await page.getByRole("button", { name: "Authorize" }).click();
  await page.getByRole("navigation", { name: "Main" }).waitFor();
  seen.landed = page.url();
  seen.who = await page.getByTestId("who").textContent();
  seen.heading = await page.getByRole("heading", { level: 1 }).first().textContent();
  await shot(page, "sso-30-signed-in");
  step("signed in through the provider");

  await page.getByRole("button", { name: "Log out", exact: true }).click();
  await page.getByTestId("sso").click();
  await page.getByPlaceholder("sub").fill(task.refused_sub);
  await page.getByRole("button", { name: "Authorize" }).click();
  seen.refused = await page.getByRole("alert").textContent();
  await shot(page, "sso-40-refused");
  step("refused sign-in shows its reason");
  process.stdout.write(JSON.stringify(seen));
} catch (e) {
  await failed(e);
} finally {
  await close();
}
