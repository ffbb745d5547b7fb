// Drives the intentd operator console in a real browser: Debian's chromium through
// playwright-core (no browser download). Started by tests/console_browser.rs against a running
// `intentd serve`; can be run by hand the same way:
//
//   node console.js --base http://127.0.0.1:8080 --admin-token dev-admin-token \
//     --bot demo --bot-token dev-demo-token --replies config/operator/replies.yml \
//     --screenshots /tmp/console-shots
//
// Steps: log in (a wrong token first), see the overview's counts move after sending traffic,
// read the A/B page, classify a text in "Try it" (and check a <script> in it stays text),
// preview a reply (clean, then with a banned word in the nickname), break replies.yml and see
// the Reload error with file:line, repair it, log out. One screenshot per page.
// Exit code 0 only when every step passed; the last line says how many.

import { chromium } from 'playwright-core';
import { readFileSync, writeFileSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';

function args() {
  const out = {};
  const argv = process.argv.slice(2);
  for (let i = 0; i < argv.length; i += 2) {
    out[argv[i].replace(/^--/, '')] = argv[i + 1];
  }
  for (const k of ['base', 'admin-token', 'bot', 'bot-token', 'replies', 'screenshots']) {
    if (!out[k]) throw new Error(`missing --${k}`);
  }
  return out;
}

const opt = args();
const chromiumPath = process.env.CHROMIUM || '/usr/bin/chromium';
mkdirSync(opt.screenshots, { recursive: true });

let steps = 0;
function ok(what) {
  steps += 1;
  console.log(`ok ${steps} - ${what}`);
}
function check(cond, what) {
  if (!cond) throw new Error(`check failed: ${what}`);
}

async function shot(page, name) {
  await page.screenshot({ path: join(opt.screenshots, `${name}.png`), fullPage: true });
}

async function classify(i, text, user) {
  const r = await fetch(`${opt.base}/v1/classify`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${opt['bot-token']}` },
    body: JSON.stringify({
      bot_id: opt.bot, chat_id: 'e2e-group', chat_name: '端到端测试群',
      message_id: `e2e-${Date.now()}-${i}`, text, user: { id: user, nickname: '小李' },
    }),
  });
  check(r.ok, `POST /v1/classify answered ${r.status}`);
}

async function volume(page) {
  const v = await page.locator('.figure', { has: page.locator('.name', { hasText: /^Volume$/ }) })
    .locator('.value').innerText();
  return Number(v.trim());
}

const browser = await chromium.launch({
  executablePath: chromiumPath,
  headless: true,
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking'],
});
let failed = false;
try {
  const context = await browser.newContext({ viewport: { width: 1280, height: 900 }, locale: 'zh-CN' });
  const page = await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  page.on('dialog', (d) => { pageErrors.push(`dialog: ${d.message()}`); d.dismiss(); });

  // 1. Login: a page without a session lands on the login form; a wrong token is refused.
  await page.goto(`${opt.base}/console/overview`);
  check(new URL(page.url()).pathname === '/console/login', `redirected to login, at ${page.url()}`);
  await page.fill('input[name=token]', 'wrong-token');
  await page.click('button[type=submit]');
  await page.getByText('Wrong token').waitFor();
  ok('a wrong token is refused');
  await shot(page, 'login');
  await page.fill('input[name=token]', opt['admin-token']);
  await page.click('form.card button[type=submit]');
  await page.waitForURL('**/console/overview');
  check((await page.title()).includes('Overview'), 'overview title');
  ok('the admin token logs in');

  // 2. Overview: counts move after traffic.
  const before = await volume(page);
  const texts = ['发票怎么开', '有优惠券吗', '几点发货', '我要退款'];
  for (let i = 0; i < texts.length; i += 1) await classify(i, texts[i], `e2e-user-${i}`);
  await page.reload();
  const after = await volume(page);
  check(after === before + texts.length, `volume ${before} -> ${after}, expected +${texts.length}`);
  check(await page.locator('figure.chart svg').count() >= 2, 'two charts');
  check(await page.getByText('e2e-group').count() > 0, 'the new group is listed');
  check(await page.getByText('Definitions').count() === 1, 'definitions stated');
  ok(`overview volume moved ${before} -> ${after}`);
  await shot(page, 'overview');

  // 3. A/B experiments.
  await page.click('nav >> text=A/B experiments');
  await page.waitForURL('**/console/experiments');
  check(await page.getByRole('heading', { name: 'coupon_copy_2027q1' }).count() === 1, 'the coupon experiment');
  check(await page.locator('.verdict').count() >= 1, 'a verdict');
  ok('A/B page shows the experiment and its verdict');
  await shot(page, 'experiments');

  // 4. Try it: the decision trace.
  await page.click('nav >> text=Try it');
  await page.fill('input[name=nickname]', '小王');
  await page.fill('textarea[name=text]', '买的鞋子不合适，想退货退款');
  await page.click('form.card button[type=submit]');
  await page.locator('#trace').waitFor();
  const trace = await page.locator('#trace').innerText();
  check(/Action/.test(trace) && /Fusion step/.test(trace) && /Ranking/.test(trace), 'trace sections');
  check(await page.locator('#trace table.data tbody tr').count() >= 2, 'ranking rows');
  check(/refund|return/.test(trace), `a refund/return intent in the trace: ${trace.slice(0, 400)}`);
  ok('try-it shows the decision trace');
  await shot(page, 'try-it');
  // A script in the text stays text.
  await page.fill('textarea[name=text]', '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">我要退款');
  await page.click('form.card button[type=submit]');
  await page.locator('#trace').waitFor();
  check(await page.evaluate(() => window.__pwned) === undefined, 'no script ran');
  check((await page.locator('textarea[name=text]').inputValue()).includes('<script>'), 'the text is shown as typed');
  ok('a <script> in the message is shown, not run');

  // 5. Replies: preview, clean and with a banned word.
  await page.click('nav >> text=Replies');
  await page.waitForURL('**/console/replies');
  await page.selectOption('select[name=key]', 'welcome');
  await page.fill('input[name=nickname]', '小王');
  await page.fill('input[name=group_name]', '潮鞋交流群');
  await page.fill('input[name=at]', '2027-02-07T09:30');
  await page.click('#preview button[type=submit]');
  await page.locator('#preview-result').waitFor();
  let result = await page.locator('#preview-result').innerText();
  check(result.includes('小王') && result.includes('潮鞋交流群'), 'names rendered');
  check(result.includes('clean') && !result.includes('banned word'), 'clean result');
  ok('reply preview renders with the sample user, group and date');
  await shot(page, 'replies-preview');
  await page.fill('input[name=nickname]', '加微信');
  await page.click('#preview button[type=submit]');
  await page.locator('#preview-result').waitFor();
  result = await page.locator('#preview-result').innerText();
  check(result.includes('contains the banned word'), 'banned word flagged');
  ok('the banned-word check flags a rendered reply');

  // 6. Reload: a broken replies.yml is named with file:line, nothing changes; repaired, it loads.
  const good = readFileSync(opt.replies, 'utf8');
  const hashBefore = await page.locator('#config-hash').innerText();
  writeFileSync(opt.replies, good.replace('  welcome:\n', '  welcome: [oops\n'));
  try {
    await page.click('#reload button[type=submit]');
    const err = page.locator('#reload .notice.error');
    await err.waitFor();
    const text = await err.innerText();
    check(/replies\.yml:\d+/.test(text), `file:line in "${text}"`);
    check((await page.locator('#config-hash').innerText()) === hashBefore, 'old files still in service');
    ok(`reload of a broken file is refused: ${text.split('\n')[0].slice(0, 120)}`);
    await shot(page, 'replies-reload-error');
  } finally {
    writeFileSync(opt.replies, good);
  }
  await page.click('#reload button[type=submit]');
  await page.locator('#reload .notice.ok').waitFor();
  ok('the repaired file reloads');

  // 7. Logout.
  await page.click('form.logout button');
  await page.waitForURL('**/console/login');
  await page.goto(`${opt.base}/console/overview`);
  check(new URL(page.url()).pathname === '/console/login', 'logged out');
  ok('logout ends the session');
  check(pageErrors.length === 0, `page errors: ${pageErrors.join('; ')}`);
} catch (e) {
  failed = true;
  console.error(`FAILED after ${steps} steps: ${e.stack || e}`);
} finally {
  await browser.close();
}
if (failed) process.exit(1);
console.log(`console e2e: all ${steps} steps passed`);
