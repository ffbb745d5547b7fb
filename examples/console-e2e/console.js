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
// the Reload error with file:line, repair it, approve a blocked message, claim and close a
// handoff, label an inbox item and find it in labels.yml, log out. One screenshot per page.
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

async function classify(i, text, user, chat = 'e2e-group') {
  const r = await fetch(`${opt.base}/v1/classify`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${opt['bot-token']}` },
    body: JSON.stringify({
      bot_id: opt.bot, chat_id: chat, chat_name: '端到端测试群',
      message_id: `e2e-${Date.now()}-${i}`, text, user: { id: user, nickname: '小李' },
    }),
  });
  check(r.ok, `POST /v1/classify answered ${r.status}`);
  return r.json();
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
  await page.fill('input[name=name]', 'e2e-operator');
  await page.fill('input[name=token]', 'wrong-token');
  await page.click('button[type=submit]');
  await page.getByText('Wrong token').waitFor();
  ok('a wrong token is refused');
  await shot(page, 'login');
  await page.fill('input[name=name]', 'e2e-operator');
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

  // 7. The operators' desk: approve a blocked message, claim and close a handoff, label an
  // inbox item and find it in the export.
  const blocked = await classify(100, '<script>window.__pwned = 3</script>退款怎么弄，加微信说', 'e2e-desk-1', 'e2e-desk');
  check(blocked.action === 'BLOCK', `blocked: ${JSON.stringify(blocked).slice(0, 200)}`);
  const handed = await classify(101, '我要投诉你们', 'e2e-desk-2', 'e2e-desk');
  check(handed.action === 'HANDOFF', `handed off: ${JSON.stringify(handed).slice(0, 200)}`);
  await classify(102, '嗯嗯啊啊哦哦', 'e2e-desk-3', 'e2e-desk');

  await page.click('nav >> text=Review');
  await page.waitForURL('**/console/review');
  const row = page.locator('#reviews tbody tr', { hasText: '退款怎么弄' });
  check(await row.count() === 1, 'the blocked message is listed');
  check((await row.innerText()).includes('<script>'), 'the message is shown as text');
  check(await page.evaluate(() => window.__pwned) === undefined, 'no script ran on the review page');
  await shot(page, 'review');
  await row.locator('input[name=allow_word]').check();
  await row.locator('button', { hasText: 'Approve' }).click();
  await page.locator('#outcome .notice.ok').waitFor();
  const approved = await page.locator('#outcome').innerText();
  check(approved.includes('Approved review') && approved.includes('allowed in group e2e-desk'), `approved: ${approved}`);
  check(await page.locator('#reviews tbody tr', { hasText: '退款怎么弄' }).count() === 0, 'no longer pending');
  ok(`a blocked message is approved: ${approved.slice(0, 120)}`);

  await page.click('nav >> text=Handoffs');
  await page.waitForURL('**/console/handoffs');
  const hrow = page.locator('#handoffs tbody tr', { hasText: 'e2e-desk-2' });
  check(await hrow.count() === 1, 'the handoff is listed');
  await hrow.locator('button', { hasText: 'Claim' }).click();
  await page.locator('#outcome .notice.ok').waitFor();
  check((await page.locator('#outcome').innerText()).includes('claimed by e2e-operator'), 'claimed');
  check((await page.locator('#handoffs tbody tr', { hasText: 'e2e-desk-2' }).innerText()).includes('claimed by e2e-operator'), 'shown as claimed');
  await shot(page, 'handoffs');
  await page.locator('#handoffs tbody tr', { hasText: 'e2e-desk-2' }).locator('button', { hasText: 'Close' }).click();
  await page.locator('#outcome .notice.ok').waitFor();
  check((await page.locator('#outcome').innerText()).includes('closed by e2e-operator'), 'closed');
  check(await page.locator('#handoffs tbody tr', { hasText: 'e2e-desk-2' }).count() === 0, 'no longer listed');
  ok('a handoff is claimed and closed');

  await page.click('nav >> text=Inbox');
  await page.waitForURL('**/console/inbox');
  // The unclear message if the model was unsure of it, else the newest item.
  let irow = page.locator('tr[id^=inbox-]', { hasText: '嗯嗯啊啊哦哦' });
  if (await irow.count() === 0) irow = page.locator('tr[id^=inbox-]').first();
  check(await irow.count() === 1, 'the inbox has an item');
  const labelledText = (await irow.locator('td.reply').innerText()).trim();
  await shot(page, 'inbox');
  const intent = await irow.locator('select[name=intent] option').first().getAttribute('value');
  await irow.locator('select[name=intent]').selectOption(intent);
  await irow.locator('button', { hasText: 'Label' }).click();
  await page.locator('#outcome .notice.ok').waitFor();
  check((await page.locator('#outcome').innerText()).includes(`as ${intent}`), 'labelled');
  // The page's CSP allows no fetch: download with the browser context's cookies instead.
  const exported = await context.request.get(`${opt.base}/console/labels.yml`);
  check(exported.ok() && (exported.headers()['content-type'] || '').startsWith('application/yaml'), `export answered ${exported.status()}`);
  const yaml = await exported.text();
  check(yaml.includes(`- intent: ${intent}`) && yaml.includes(labelledText), `export: ${yaml.slice(0, 300)}`);
  ok(`an inbox item is labelled ${intent} and exported`);

  // 8. Logout.
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
