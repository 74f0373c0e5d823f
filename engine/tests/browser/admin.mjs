// The admin UI in a real headless Chromium (Debian's, driven by playwright-core over CDP).
// Started by engine/tests/admin_browser.rs, which runs the engine, its admin UI and recording
// workers, prepares the sagas and passes their ids in the environment. When the script needs the
// test to act outside the browser (remove a fault, wait for a saga to settle) it writes
// `ASK {json}` on stdout and reads the answer, one JSON line, on stdin.
//
// Any failed expectation throws, the script exits non-zero and the Rust test fails.

import assert from "node:assert/strict";
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const env = (name) => {
  const v = process.env[name];
  if (!v) throw new Error(`${name} is not set; run this through engine/tests/admin_browser.rs`);
  return v;
};
const BASE = env("ADMIN_URL");
const USER = env("ADMIN_USER");
const PASSWORD = env("ADMIN_PASSWORD");
const SHOTS = env("SCREENSHOT_DIR");
const RETRY = env("SAGA_RETRY");
const BULK = env("SAGA_BULK").split(",");
const KEEP = env("SAGA_KEEP");
const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";

const lines = createInterface({ input: process.stdin })[Symbol.asyncIterator]();
async function ask(request) {
  process.stdout.write(`ASK ${JSON.stringify(request)}\n`);
  const { value, done } = await lines.next();
  if (done) throw new Error(`no answer to ${JSON.stringify(request)}`);
  const answer = JSON.parse(value);
  if (answer.error) throw new Error(`${request.ask}: ${answer.error}`);
  return answer;
}

const step = (what) => console.log(`step: ${what}`);

mkdirSync(SHOTS, { recursive: true });
const profile = mkdtempSync(join(tmpdir(), "orderflow-admin-chromium-"));
const context = await chromium.launchPersistentContext(profile, {
  executablePath: CHROMIUM,
  headless: true,
  viewport: { width: 1440, height: 900 },
  args: [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
  ],
});
context.setDefaultTimeout(15_000);

try {
  const page = context.pages()[0] ?? (await context.newPage());
  // Every action asks "are you sure?"; the operator says yes.
  page.on("dialog", (d) => d.accept());

  step("a page without login redirects to the login page");
  await page.goto(`${BASE}/admin/stuck`);
  assert.match(page.url(), /\/admin\/login\?next=\/admin\/stuck$/);
  await page.screenshot({ path: join(SHOTS, "login.png") });

  step("log in");
  await page.fill('input[name="username"]', USER);
  await page.fill('input[name="password"]', "not the password");
  await page.click('button[type="submit"]');
  await page.getByText("Wrong user name or password.").waitFor();
  await page.fill('input[name="username"]', USER);
  await page.fill('input[name="password"]', PASSWORD);
  await page.click('button[type="submit"]');
  await page.waitForURL(`${BASE}/admin/stuck`);
  const cookies = await context.cookies();
  const session = cookies.find((c) => c.name === "orderflow_admin");
  assert.ok(session, "a session cookie");
  assert.equal(session.httpOnly, true);
  assert.equal(session.sameSite, "Strict");

  step("the failing saga is under Stuck with its error");
  const row = page.locator(`tr[data-id="${RETRY}"]`);
  await row.waitFor();
  assert.equal(await row.getAttribute("data-kind"), "retrying");
  const why = await row.locator("td.why").innerText();
  assert.match(why, /^Retrying `payment\.charge`: attempt \d+ failed with stripe_down: injected fail_transient fault/);
  for (const id of [...BULK, KEEP]) {
    await page.locator(`tr[data-id="${id}"]`).waitFor();
  }
  await page.screenshot({ path: join(SHOTS, "stuck.png"), fullPage: true });

  step("the list shows every saga with counts per status");
  await page.click('header nav a[href="/admin/workflows"]');
  await page.locator(`tr[data-id="${RETRY}"]`).waitFor();
  const running = await page.locator('nav.counts a[data-status="running"] .n').innerText();
  assert.ok(Number(running) >= 4, `running count ${running}`);
  await page.screenshot({ path: join(SHOTS, "list.png"), fullPage: true });

  step("the timeline shows the failing step");
  await page.click(`tr[data-id="${RETRY}"] td.id a`);
  await page.waitForURL(`${BASE}/admin/workflows/${RETRY}`);
  await page.locator('svg.timeline g.step[data-step="charge"][data-status="retrying"]').waitFor();
  await page.locator('svg.timeline g.step[data-step="reserve"][data-status="completed"]').waitFor();
  assert.match(await page.locator("#attempts").innerText(), /stripe_down: injected fail_transient fault/);
  assert.equal(await page.locator("#trace-id").innerText(), RETRY.replaceAll("-", ""));
  await page.screenshot({ path: join(SHOTS, "detail.png"), fullPage: true });

  step("after the fault is removed, retry makes it complete");
  await ask({ ask: "clear_faults", id: RETRY });
  const retry = page.locator('form[data-action="retry"]');
  await retry.locator('input[name="reason"]').fill("payment gateway is back");
  await retry.locator('button[type="submit"]').click();
  await page.locator(".flash.ok", { hasText: "Retry now recorded as event" }).waitFor();
  const settled = await ask({ ask: "settled", id: RETRY });
  assert.equal(settled.status, "completed");
  await page.reload();
  for (const s of ["reserve", "charge", "create_order", "notify"]) {
    await page.locator(`svg.timeline g.step[data-step="${s}"][data-status="completed"]`).waitFor();
  }
  await page.locator('#history tr[data-event="retry_requested"]', { hasText: "payment gateway is back" }).waitFor();
  await page.screenshot({ path: join(SHOTS, "detail-completed.png"), fullPage: true });

  step("a bulk cancel compensates the selected sagas");
  await page.goto(`${BASE}/admin/stuck?activity=payment.charge`);
  for (const id of BULK) {
    await page.locator(`tr[data-id="${id}"] input[name="ids"]`).check();
  }
  const bulk = page.locator("form#bulk");
  await bulk.locator('select[name="action"]').selectOption("cancel");
  await bulk.locator('input[name="reason"]').fill("gateway outage: refund these");
  await bulk.locator('button[type="submit"]').click();
  await page.waitForURL(`${BASE}/admin/bulk/preview`);
  assert.equal(await page.locator("#bulk-count strong.n").innerText(), String(BULK.length));
  await page.screenshot({ path: join(SHOTS, "bulk-preview.png"), fullPage: true });
  await page.locator('form#bulk-confirm button[type="submit"]').click();
  await page.waitForURL(`${BASE}/admin/bulk`);
  assert.equal(await page.locator("#bulk-result .applied").innerText(), String(BULK.length));
  for (const id of BULK) {
    assert.equal((await ask({ ask: "settled", id })).status, "cancelled");
  }

  step("an action without the CSRF token is refused");
  const forged = await page.request.post(`${BASE}/admin/workflows/${KEEP}/terminate`, {
    form: { reason: "no token" },
    maxRedirects: 0,
  });
  assert.equal(forged.status(), 403);
  assert.equal(forged.headers()["content-type"], "application/problem+json");
  assert.equal((await forged.json()).field, "csrf");
  assert.equal((await ask({ ask: "status", id: KEEP })).status, "running");

  step("the audit view lists every operator action");
  await page.goto(`${BASE}/admin/audit`);
  const audit = await page.locator("#audit").innerText();
  assert.match(audit, /payment gateway is back/);
  assert.equal((audit.match(/gateway outage: refund these/g) || []).length, BULK.length);
  await page.screenshot({ path: join(SHOTS, "audit.png"), fullPage: true });

  step("logging out ends the session");
  await page.click("form.logout button");
  await page.waitForURL(/\/admin\/login$/);
  await page.goto(`${BASE}/admin/workflows`);
  assert.match(page.url(), /\/admin\/login\?next=/);

  console.log("browser: all steps passed");
} finally {
  await context.close();
  rmSync(profile, { recursive: true, force: true });
}
process.exit(0);
