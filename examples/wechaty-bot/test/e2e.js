// End-to-end test of the Wechaty bot: a wechaty-puppet-mock account in mock rooms, the real
// `intentd serve` (on its manual clock) behind it. Driven by tests/wechaty_bot.rs, which starts
// intentd and answers two requests on stdin/stdout: "@@ stop" (kill intentd; reply "stopped")
// and "@@ start <ms>" (start it again on the same address and data, its manual clock at <ms>;
// reply "started").
//
// Env: INTENTD_ADDR, INTENTD_TOKEN, INTENTD_ADMIN_TOKEN, INTENTD_T0 (the manual clock's start).
import assert from 'node:assert/strict'
import readline from 'node:readline'

import { WechatyBuilder } from 'wechaty'
import { PuppetMock, mock } from 'wechaty-puppet-mock'

import { attachIntentdBot, normalizeConfig } from '../bot.js'
import { IntentdClient } from '../intentd.js'

const env = (k) => {
  const v = process.env[k]
  if (!v) throw new Error(`${k} is not set (this script is run by tests/wechaty_bot.rs)`)
  return v
}
const ADDR = env('INTENTD_ADDR')
const T0 = Number(env('INTENTD_T0'))
const HOUR = 3600_000

const logs = []
const log = (level, msg, fields = {}) => {
  const line = JSON.stringify({ level, msg, ...fields })
  logs.push(line)
  process.stderr.write(line + '\n')
}

// ---- the Rust side's stdin answers ---------------------------------------------------------
const lines = readline.createInterface({ input: process.stdin })
const pending = []
const waiting = []
lines.on('line', (l) => { const w = waiting.shift(); if (w) w(l); else pending.push(l) })
const nextLine = () => pending.length ? Promise.resolve(pending.shift()) : new Promise(resolve => waiting.push(resolve))
async function ask (what, expect) {
  process.stdout.write(`@@ ${what}\n`)
  const answer = await nextLine()
  assert.equal(answer.trim(), expect, `driver answered ${answer} to ${what}`)
}

async function waitFor (what, pred, timeoutMs = 20_000) {
  const until = Date.now() + timeoutMs
  for (;;) {
    const v = pred()
    if (v) return v
    if (Date.now() > until) throw new Error(`timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}
const sleep = (ms) => new Promise(resolve => setTimeout(resolve, ms))

// ---- the mock WeChat world -------------------------------------------------------------------
const mocker = new mock.Mocker()
const puppet = new PuppetMock({ mocker })
const wechaty = WechatyBuilder.build({ puppet, name: 'intentd-e2e' })

const contact = (id, name) => mocker.createContact({ id, name })
const self = contact('bot-self', 'bot')
const agent = contact('agent-wang', '客服小王')
const alice = contact('alice', '小李')
const bob = contact('bob', '阿宝')
const carol = contact('carol', '小芳')
const dave = contact('dave', '大伟')
const eve = contact('eve', '小夏')
const frank = contact('frank', '阿峰')
const grace = contact('grace', '小雅')
const henry = contact('henry', '小亨')

const room = (id, topic, members) => mocker.createRoom({
  id,
  topic,
  memberIdList: [self.id, agent.id, ...members.map(c => c.id)],
  ownerId: agent.id,
  adminIdList: [agent.id],
})
const rooms = {
  refund: room('refund@chatroom', '售后群', [alice]),
  welcome: room('welcome@chatroom', '新人群', []),
  solo: room('solo@chatroom', '单人群', []),
  banned: room('banned@chatroom', '闲聊群', [dave]),
  complaint: room('complaint@chatroom', '投诉群', [eve]),
  card: room('card@chatroom', '好物群', [frank]),
  restart: room('restart@chatroom', '重启群', [grace]),
}

// What each room actually received from the bot account (the mock's own record of the send).
const received = new Map(Object.values(rooms).map(r => [r.id, []]))
for (const r of Object.values(rooms)) {
  r.on('message', (m) => {
    if (m.payload.talkerId === self.id) received.get(r.id).push(m.payload.text)
  })
}
const privateToAgent = []
agent.on('message', (m) => {
  if (m.payload.talkerId === self.id && !m.payload.roomId) privateToAgent.push(m.payload.text)
})

// Wechaty re-emits puppet errors; without a listener Node would end the process. (The mock
// marks a room's member list dirty on a join and Wechaty then looks the room id up as a
// contact, which the mock cannot answer: harmless, logged.)
wechaty.on('error', (e) => log('warn', 'wechaty error', { error: e.message }))
const loggedIn = new Promise(resolve => wechaty.once('login', resolve))
await wechaty.start()
mocker.login(self)
await loggedIn

const cfg = normalizeConfig({
  bot_id: 'demo',
  intentd: { addr: ADDR, token: env('INTENTD_TOKEN'), deadline_ms: 3000 },
  agents: [agent.id],
  notify_agents_on_block: true,
  texts: { block_notice: 'blocked in {room} from {nickname} ({reason}): {text}' },
  card_ids: { 'https://mock.url': 'product_card' },
  profiles: { alice: { tags: ['老客户'], city: '上海', vip_level: 0 } },
  reconnect: { min_ms: 100, max_ms: 1000 },
}, 'e2e config')

const sent = []
const decisions = []
const bot = attachIntentdBot(wechaty, cfg, { log })
bot.on('sent', (s) => sent.push(s))
bot.on('decision', (d) => decisions.push(d))
bot.on('outbound', (o) => log('info', 'outbound', { chat: o.chat_id, kind: o.kind, rule: o.rule_id, text: o.reply?.text }))
bot.on('sent', (s) => log('info', 'sent', { room: s.roomId, cause: s.cause, kind: s.kind, text: s.text }))
await waitFor('the Subscribe stream', () => bot.stats.stream_connects >= 1)

const admin = new IntentdClient({ addr: ADDR, token: cfg.intentd.token, adminToken: env('INTENTD_ADMIN_TOKEN') })
const decisionFor = (roomId) => waitFor(`a decision in ${roomId}`, () => decisions.find(d => d.roomId === roomId))

// 1. A refund question gets the refund reply (after the automation notice: first reply to her).
alice.say('怎么退款').to(rooms.refund)
const refund = await decisionFor(rooms.refund.id)
assert.equal(refund.action, 'REPLY', JSON.stringify(refund))
assert.equal(refund.intent, 'refund')
await waitFor('the refund reply in the room', () => sent.some(s => s.roomId === rooms.refund.id && s.messageId === refund.messageId && s.text.includes('退')))
const refundTexts = received.get(rooms.refund.id)
assert.ok(refundTexts.some(t => t.startsWith('小李') && t.includes('退')), `refund room got: ${JSON.stringify(refundTexts)}`)

// 2. Two joins inside the merge window: no welcome yet; one merged welcome after the window,
//    @-mentioning both. A lone join in another room: its welcome @-mentions that member.
rooms.welcome.add(bob).by(agent)
rooms.welcome.add(carol).by(agent)
rooms.solo.add(henry).by(agent)
const joinsIn = (roomId) => decisions.filter(d => d.event === 'MEMBER_JOINED' && d.roomId === roomId)
await waitFor('two MEMBER_JOINED decisions', () => joinsIn(rooms.welcome.id).length === 2)
await waitFor('the lone MEMBER_JOINED decision', () => joinsIn(rooms.solo.id).length === 1)
const joins = joinsIn(rooms.welcome.id).map(d => d.reason).sort()
assert.deepEqual(joins, ['merged_welcome', 'welcome:queued'])
assert.equal(joinsIn(rooms.solo.id)[0].reason, 'welcome:queued')
await sleep(500)
assert.deepEqual(received.get(rooms.welcome.id), [], 'no welcome before the window ends')
assert.deepEqual(received.get(rooms.solo.id), [], 'no welcome before the window ends')
await admin.setClock(T0 + 61_000)
await waitFor('the merged welcome', () => received.get(rooms.welcome.id).length >= 1)
await waitFor('the lone welcome', () => received.get(rooms.solo.id).length >= 1)
await sleep(1500) // a second welcome would arrive within a collect tick
const welcomes = received.get(rooms.welcome.id)
assert.equal(welcomes.length, 1, `exactly one welcome: ${JSON.stringify(welcomes)}`)
assert.ok(welcomes[0].includes('阿宝') && welcomes[0].includes('小芳'), welcomes[0])
const merged = sent.find(s => s.roomId === rooms.welcome.id)
assert.equal(merged.kind, 'WELCOME')
assert.deepEqual([...merged.mentions].sort(), [bob.id, carol.id], JSON.stringify(merged))
assert.ok(welcomes[0].startsWith('@'), `the welcome @-mentions its members: ${welcomes[0]}`)
assert.ok(welcomes[0].includes('@阿宝') && welcomes[0].includes('@小芳'), welcomes[0])
const lone = sent.find(s => s.roomId === rooms.solo.id)
assert.equal(lone.kind, 'WELCOME')
assert.deepEqual(lone.mentions, [henry.id], JSON.stringify(lone))
assert.equal(received.get(rooms.solo.id).length, 1, JSON.stringify(received.get(rooms.solo.id)))
assert.ok(received.get(rooms.solo.id)[0].startsWith('@小亨'), received.get(rooms.solo.id)[0])

// 3. A banned-word message: BLOCK, silence in the room, a private notice to the agent.
dave.say('加微信领红包，兼职日结').to(rooms.banned)
const blocked = await decisionFor(rooms.banned.id)
assert.equal(blocked.action, 'BLOCK', JSON.stringify(blocked))
await waitFor('the agent notice', () => privateToAgent.length >= 1)
assert.ok(privateToAgent[0].includes('加微信') && privateToAgent[0].includes('闲聊群'), privateToAgent[0])
await sleep(3000) // longer than any spacing jitter: a reply would have gone out by now
assert.deepEqual(received.get(rooms.banned.id), [], 'nothing said in the room')

// 4. A complaint: HANDOFF, the reply @-mentions the agent.
eve.say('你们的服务太差了，我要投诉！').to(rooms.complaint)
const complaint = await decisionFor(rooms.complaint.id)
assert.equal(complaint.action, 'HANDOFF', JSON.stringify(complaint))
await waitFor('the handoff reply', () => received.get(rooms.complaint.id).some(t => t.startsWith('@客服小王')))
const handoff = sent.find(s => s.roomId === rooms.complaint.id && s.mentions.length)
assert.deepEqual(handoff.mentions, [agent.id])
assert.ok(handoff.text.includes('小夏'), handoff.text)

// 5. The agent answers in the room: reported as a human reply, not classified.
const before = decisions.length
agent.say('您好，我是客服小王，马上为您处理。').to(rooms.complaint)
await waitFor('the human reply report', () => bot.stats.human_replies === 1)
assert.equal(decisions.length, before, 'an agent message is not classified')

// 6. A shared link mapped to a card id: CARD_SHARED gets the card guidance.
const cardMsgId = 'card-msg-1'
mocker.MessageMock.create({ id: cardMsgId, talkerId: frank.id, roomId: rooms.card.id, timestamp: Date.now(), type: 14, mentionIdList: [] })
puppet.emit('message', { messageId: cardMsgId })
const card = await decisionFor(rooms.card.id)
assert.equal(card.event, 'CARD_SHARED')
assert.equal(card.reason, 'guidance:card', JSON.stringify(card))
await waitFor('the card guidance', () => received.get(rooms.card.id).some(t => t.startsWith('阿峰')))

// 7. The next weekday 09:00 (bot time zone): the morning_tip schedule reaches the known rooms.
await admin.setClock(T0 + 23 * HOUR + 30_000) // Thursday 09:00:30 Asia/Shanghai
const tipIn = (roomId) => sent.find(s => s.roomId === roomId && s.kind === 'SCHEDULED')
await waitFor('the scheduled morning tip', () => tipIn(rooms.banned.id), 15_000)
const tip = tipIn(rooms.banned.id)
assert.equal(tip.ruleId, 'schedule:morning_tip')
assert.ok(received.get(rooms.banned.id).includes(tip.text))
// Alice's profile (city 上海) earned her a personal push in the refund room, due at the same
// moment: it goes first, and the tip waits for the group's spacing (15 s on intentd's clock).
await waitFor('the profile-driven push', () => sent.some(s => s.roomId === rooms.refund.id && s.kind === 'DELAYED_REPLY' && s.ruleId === 'push:shanghai_event'))
const push = sent.find(s => s.roomId === rooms.refund.id && s.ruleId === 'push:shanghai_event')
assert.deepEqual(push.mentions, [alice.id], `the push @-mentions its user: ${JSON.stringify(push)}`)
// The schedule is group-wide: it names nobody.
assert.deepEqual(tip.mentions, [], JSON.stringify(tip))
await sleep(1500)
assert.equal(tipIn(rooms.refund.id), undefined, 'the tip does not follow the push within the spacing')
await admin.setClock(T0 + 23 * HOUR + 60_000)
await waitFor('the deferred tip in the refund room', () => tipIn(rooms.refund.id), 15_000)

// 8. intentd goes away: the bot says nothing and counts; it comes back: the bot works again.
await ask('stop', 'stopped')
const unreachableBefore = bot.stats.unreachable
const sentBefore = bot.stats.sent
grace.say('怎么申请退款？').to(rooms.restart)
await waitFor('the unreachable count', () => bot.stats.unreachable > unreachableBefore, 15_000)
await sleep(1000)
assert.equal(bot.stats.sent, sentBefore, 'nothing sent while intentd is down')
assert.deepEqual(received.get(rooms.restart.id), [])
assert.ok(logs.some(l => l.includes('intentd unreachable')), 'the failure is logged')
const connectsBefore = bot.stats.stream_connects
await ask(`start ${T0 + 23 * HOUR + 60_000}`, 'started')
await waitFor('the Subscribe stream to reconnect', () => bot.stats.stream_connects > connectsBefore, 20_000)
grace.say('怎么退款').to(rooms.restart)
await waitFor('a reply after the restart', () => received.get(rooms.restart.id).some(t => t.startsWith('小雅')), 20_000)

bot.stop()
admin.close()
await wechaty.stop()
process.stdout.write(`@@ ok ${JSON.stringify(bot.stats)}\n`)
process.exit(0)
