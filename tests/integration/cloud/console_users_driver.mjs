// Drives user administration in Chromium: an operator admin creates a tenant and invites its first
// admin (the link is shown once and mailed); the admin opens the link, chooses a password and is
// signed in; invites a customer, makes them an admin and back, disables them; signs out and in
// again with the chosen password. Task on stdin, observations as JSON on stdout.
import { launch, readTask, stepper } from "./console_browser.mjs";

const task = await readTask();
const seen = { console_errors: [], steps: [] };
const step = stepper(seen);
const { browser, close, watch, shot, login, failed } = await launch(task, seen);
const nav = (page, name) => page.getByRole("navigation", { name: "Main" }).getByRole("link", { name, exact: true }).click();
const here = (link) => task.base + new URL(link).pathname + new URL(link).hash; // the cloud's own address

try {
  const op = browser.pages()[0] ?? (await browser.newPage());
  watch(op, "operator");
  op.on("dialog", (d) => d.accept());
  await login(op, task.operator_email);
  await nav(op, "Tenants");
  const form = op.getByRole("form", { name: "New tenant" });
  await form.getByLabel("Slug").fill(task.slug);
  await form.getByLabel("Tenant name").fill("Harbour Pumps");
  await form.getByRole("button", { name: "Create tenant" }).click();
  await op.getByRole("row", { name: new RegExp(task.slug) }).getByRole("link", { name: "Users" }).click();
  await op.getByRole("heading", { name: "Users of Harbour Pumps" }).waitFor();
  step("operator on the new tenant's users");
  const invite = op.getByRole("form", { name: "Invite user" });
  await invite.getByLabel("Email").fill(task.admin_email);
  await invite.getByLabel("Role").selectOption("tenant-admin");
  await invite.getByRole("button", { name: "Invite" }).click();
  const firstLink = await op.getByTestId("secret-token").textContent();
  seen.first_link = firstLink;
  seen.first_dialog = await op.getByRole("dialog").textContent();
  seen.open_href = await op.getByTestId("open-link").getAttribute("href");
  await shot(op, "users-10-operator-invites-first-admin");
  await op.getByRole("button", { name: "I have stored it" }).click();
  seen.operator_row = await op.getByTestId(`user-${task.admin_email}`).textContent();
  step("first admin invited");

  // the invited admin opens the link in a browser of their own
  const ctx = await browser.browser()?.newContext?.() ?? null;
  const admin = ctx ? await ctx.newPage() : await browser.newPage();
  watch(admin, "admin");
  admin.on("dialog", (d) => d.accept());
  await admin.goto(here(firstLink));
  seen.accept_email = await admin.getByTestId("accept-email").textContent();
  await admin.getByLabel("New password").fill(task.password);
  await admin.getByLabel("Again").fill(task.password);
  await shot(admin, "users-20-accept-invitation");
  await admin.getByRole("button", { name: "Accept and sign in" }).click();
  await admin.getByRole("navigation", { name: "Main" }).waitFor();
  seen.admin_nav = await admin.getByRole("navigation", { name: "Main" }).getByRole("link").allTextContents();
  step("invitation accepted");

  await nav(admin, "Users");
  const invite2 = admin.getByRole("form", { name: "Invite user" });
  await invite2.getByLabel("Email").fill(task.customer_email);
  await invite2.getByLabel("Name").fill("Field Tech");
  await invite2.getByRole("button", { name: "Invite" }).click();
  seen.customer_link = await admin.getByTestId("secret-token").textContent();
  await admin.getByRole("button", { name: "I have stored it" }).click();
  const row = admin.getByTestId(`user-${task.customer_email}`);
  await row.getByLabel(`Role of ${task.customer_email}`).selectOption("tenant-admin");
  await admin.waitForResponse((r) => r.url().includes("/api/v1/users") && r.request().method() === "GET");
  await row.getByLabel(`Role of ${task.customer_email}`).selectOption("customer");
  await row.getByRole("button", { name: "Disable" }).click();
  await row.getByRole("button", { name: "Enable" }).waitFor();
  seen.customer_row = await row.textContent();
  seen.self_row = await admin.getByTestId(`user-${task.admin_email}`).textContent();
  await shot(admin, "users-30-users-page");
  step("customer invited, promoted, demoted, disabled");

  await admin.getByRole("button", { name: "Log out", exact: true }).click();
  await login(admin, task.admin_email);
  seen.signed_in_again = true;
  await nav(admin, "Audit log");
  await admin.getByText("user.disable").first().waitFor();
  await shot(admin, "users-40-audit");
  step("signed in again; audit shows the changes");

  // a spent link says so
  await admin.goto(here(firstLink));
  seen.spent_link = await admin.getByRole("alert").textContent();
  await shot(admin, "users-50-spent-link");

  // forgot password, from the sign-in page
  await admin.evaluate(() => sessionStorage.clear());
  await admin.goto(task.base + "/app/");
  await admin.getByRole("button", { name: "Forgot password?" }).click();
  await admin.getByLabel("Email").fill(task.admin_email);
  await admin.getByRole("button", { name: "Send me a link" }).click();
  seen.forgot_answer = await admin.getByTestId("forgot-answer").textContent();
  await shot(admin, "users-60-forgot-password");
  step("forgot password");
  process.stdout.write(JSON.stringify(seen));
} catch (e) {
  await failed(e);
} finally {
  await close();
}
