// What the console's browser drivers share: reading the task, launching Debian's Chromium through
// playwright-core (never a downloaded browser), logging in, screenshots, collecting page errors.
import { createRequire } from "node:module";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";

export async function readTask() {
  return JSON.parse(await new Promise((resolve) => {
    let data = "";
    process.stdin.on("data", (c) => (data += c));
    process.stdin.on("end", () => resolve(data));
  }));
}

export async function launch(task, seen) {
  const require = createRequire(join(task.console_dir, "package.json"));
  const { chromium } = require("playwright-core");
  mkdirSync(task.artifacts, { recursive: true });
  const profile = mkdtempSync(join(tmpdir(), "pulse-chromium-"));
  const browser = await chromium.launchPersistentContext(profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
    ],
    viewport: { width: 1360, height: 860 },
    colorScheme: "light",
    ...(task.time_zone ? { timezoneId: task.time_zone } : {}),
  });
  browser.setDefaultTimeout(20_000);
  const close = async () => {
    await browser.close();
    rmSync(profile, { recursive: true, force: true });
  };
  const watch = (page, who) => {
    page.on("console", (m) => m.type() === "error" && seen.console_errors.push(`${who}: ${m.text()}`));
    page.on("pageerror", (e) => seen.console_errors.push(`${who}: ${e.message}`));
  };
  const shot = (page, name) => page.screenshot({ path: join(task.artifacts, `${name}.png`), fullPage: true });
  const login = async (page, email) => {
    await page.goto(task.base + "/app/");
    await page.getByLabel("Email").fill(email);
    await page.getByLabel("Password").fill(task.password);
    await page.getByRole("button", { name: "Log in" }).click();
    await page.getByRole("navigation", { name: "Main" }).waitFor();
  };
  const failed = async (e) => {
    for (const [i, p] of browser.pages().entries()) await p.screenshot({ path: join(task.artifacts, `failure-${task.prefix ?? ""}${i}.png`) }).catch(() => {});
    process.stderr.write(`driver: failed after steps ${JSON.stringify(seen.steps)}; page errors: ${JSON.stringify(seen.console_errors)}\n`);
    throw e;
  };
  return { browser, close, watch, shot, login, failed };
}

export function stepper(seen) {
  return (name) => {
    seen.steps.push(name);
    process.stderr.write(`driver: ${name}\n`);
  };
}
