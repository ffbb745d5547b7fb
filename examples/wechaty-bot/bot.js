// A Wechaty group bot that lets intentd decide: every room message and room event goes to
// intentd, and the bot only carries out the decision (say the reply after `send_after_ms`,
// @-mention the human agents on a handoff and the users a send names, stay silent on BLOCK /
// IGNORE). Proactive messages (schedules, countdowns, re-activation, merged welcomes, delayed
// pushes) arrive on one Subscribe stream per bot.
//
// The bot has no texts of its own for group members: when intentd cannot be reached it logs,
// counts and says nothing. Texts for the agents' private notices come from the config file.
//
//   node bot.js bot.config.json      (WECHATY_PUPPET / WECHATY_PUPPET_SERVICE_TOKEN as usual)
import { EventEmitter } from 'node:events'
import { createHash } from 'node:crypto'
import fs from 'node:fs'
import path from 'node:path'
import { setTimeout as delay } from 'node:timers/promises'
import { fileURLToPath } from 'node:url'

import { types } from 'wechaty'

import { IntentdClient, isUnreachable } from './intentd.js'

/** intentd's limit for ids (limits.max_id_bytes); longer event ids are hashed. */
const MAX_ID_BYTES = 128

const MESSAGE_TYPE = types.Message

/** Fills `{name}` placeholders from `vars`; unknown names stay as written. */
export function fillTemplate (template, vars) {
  return String(template).replace(/\{(\w+)\}/g, (m, k) => (k in vars ? String(vars[k]) : m))
}

/**
 * Loads and checks a bot config file (JSON). Errors name the file and the key.
 * @returns {object} the config with defaults applied
 */
export function loadConfig (file) {
  let raw
  try {
    raw = JSON.parse(fs.readFileSync(file, 'utf8'))
  } catch (e) {
    throw new Error(`${file}: cannot read the bot config: ${e.message}`)
  }
  const cfg = normalizeConfig(raw, file)
  if (cfg.profiles_file) {
    const p = path.resolve(path.dirname(file), cfg.profiles_file)
    try {
      cfg.profiles = JSON.parse(fs.readFileSync(p, 'utf8'))
    } catch (e) {
      throw new Error(`${p}: cannot read the profile file named by profiles_file: ${e.message}`)
    }
  }
  return cfg
}

/** Applies defaults and checks types; `where` names the source in errors. */
export function normalizeConfig (raw, where = 'config') {
  const fail = (key, problem) => { throw new Error(`${where}: ${key} ${problem}`) }
  const cfg = {
    bot_id: raw.bot_id,
    intentd: {
      addr: '127.0.0.1:50051',
      token: '',
      token_env: 'INTENTD_TOKEN',
      tls: false,
      deadline_ms: 5000,
      ...(raw.intentd || {}),
    },
    agents: raw.agents || [],
    notify_agents_on_block: raw.notify_agents_on_block ?? false,
    texts: { block_notice: '', handoff_notice: '', ...(raw.texts || {}) },
    card_ids: raw.card_ids || {},
    profiles_file: raw.profiles_file || '',
    profiles: raw.profiles || {},
    reconnect: { min_ms: 500, max_ms: 30000, ...(raw.reconnect || {}) },
  }
  if (typeof cfg.bot_id !== 'string' || !cfg.bot_id) fail('bot_id', 'must be the bot id configured in intentd.yml auth.bots')
  if (typeof cfg.card_ids !== 'object' || Array.isArray(cfg.card_ids)) fail('card_ids', 'must map a shared link URL or mini-program appid to a card id of replies.yml `cards`')
  if (!Array.isArray(cfg.agents) || !cfg.agents.every(a => typeof a === 'string' && a)) fail('agents', 'must be a list of contact ids')
  if (!Number.isInteger(cfg.intentd.deadline_ms) || cfg.intentd.deadline_ms < 100 || cfg.intentd.deadline_ms > 60000) fail('intentd.deadline_ms', 'must be an integer 100..=60000')
  const { min_ms: lo, max_ms: hi } = cfg.reconnect
  if (!Number.isInteger(lo) || !Number.isInteger(hi) || lo < 10 || hi < lo || hi > 600000) fail('reconnect', 'needs integers 10 <= min_ms <= max_ms <= 600000')
  if (cfg.notify_agents_on_block && !cfg.texts.block_notice) fail('texts.block_notice', 'is needed when notify_agents_on_block is true')
  if (!cfg.intentd.token && cfg.intentd.token_env) cfg.intentd.token = process.env[cfg.intentd.token_env] || ''
  if (!cfg.intentd.token) fail('intentd.token', `is empty (set it or the ${cfg.intentd.token_env} environment variable)`)
  return cfg
}

/** A short, stable id within intentd's id limit. */
function boundedId (id) {
  if (Buffer.byteLength(id) <= MAX_ID_BYTES) return id
  return 'sha1:' + createHash('sha1').update(id).digest('hex')
}

/**
 * One room's sends, in order. A send planned `gap` ms after the previous one is never made
 * sooner than `gap` after the previous one actually went out, so a slow send cannot squeeze
 * the spacing intentd planned.
 */
class SendLane {
  constructor (signal) {
    this.signal = signal
    this.tail = Promise.resolve()
    this.lastPlanned = null
    this.lastActual = null
  }

  enqueue (plannedAt, send) {
    const run = async () => {
      let at = plannedAt
      if (this.lastPlanned !== null) {
        at = Math.max(at, this.lastActual + (plannedAt - this.lastPlanned))
      }
      const wait = at - Date.now()
      if (wait > 0) await delay(wait, undefined, { signal: this.signal })
      this.lastPlanned = plannedAt
      this.lastActual = Date.now()
      await send()
    }
    const p = this.tail.then(run)
    this.tail = p.catch(() => {})
    return p
  }
}

/**
 * Connects a Wechaty instance to intentd. Returns an EventEmitter with `stats`, `stop()`, and
 * events: `sent` ({ roomId, text, mentions (contact ids), cause, kind, action, reason, ruleId,
 * outboundId }),
 * `decision` ({ roomId, messageId, action, reason }), `unreachable` ({ call, error }),
 * `outbound` (the raw Outbound), `stream` ('connected' | 'lost').
 */
export function attachIntentdBot (wechaty, cfg, { client, log = defaultLog } = {}) {
  const bot = new EventEmitter()
  const abort = new AbortController()
  const intentd = client || new IntentdClient({
    addr: cfg.intentd.addr,
    token: cfg.intentd.token,
    deadlineMs: cfg.intentd.deadline_ms,
    tls: cfg.intentd.tls,
    proto: cfg.intentd.proto,
  })
  const agents = new Set(cfg.agents)
  const lanes = new Map()
  const stats = {
    classified: 0,
    events: 0,
    human_replies: 0,
    sent: 0,
    send_errors: 0,
    unreachable: 0, // calls that failed because intentd was not there (nothing was sent)
    rejected: 0, // calls intentd refused (bad input); nothing was sent
    outbound_received: 0,
    stream_connects: 0,
    stream_losses: 0,
  }
  bot.stats = stats

  const lane = (roomId) => {
    let l = lanes.get(roomId)
    if (!l) {
      l = new SendLane(abort.signal)
      lanes.set(roomId, l)
    }
    return l
  }

  const profileOf = (contactId) => {
    const p = cfg.profiles[contactId] || {}
    return {
      tags: Array.isArray(p.tags) ? p.tags : [],
      city: p.city || '',
      vip_level: Number.isInteger(p.vip_level) ? p.vip_level : 0,
    }
  }

  const userOf = async (room, contact) => ({
    id: contact.id,
    nickname: (await room.alias(contact).catch(() => '')) || contact.name() || '',
    ...profileOf(contact.id),
  })

  const agentsIn = async (room) => {
    const found = []
    for (const id of agents) {
      const c = await wechaty.Contact.find({ id }).catch(() => undefined)
      if (c && await room.has(c).catch(() => false)) found.push(c)
    }
    return found
  }

  /**
   * The room's members among `ids` (a send's `user_ids`, a decision's `merged_user_ids`), in
   * order and once each. An id that is not in the room (left since, or unknown to this
   * account) is logged and skipped: the text still goes out, without that mention.
   */
  const membersIn = async (room, ids, why) => {
    const found = []
    for (const id of new Set(ids || [])) {
      if (!id) continue
      const c = await wechaty.Contact.find({ id }).catch(() => undefined)
      if (c && await room.has(c).catch(() => false)) found.push(c)
      else log('warn', 'a user to @-mention is not in the room; not mentioned', { room: room.id, user_id: id, cause: why })
    }
    return found
  }

  const failed = (call, err) => {
    if (isUnreachable(err)) {
      stats.unreachable++
      log('warn', 'intentd unreachable; nothing sent', { call, code: err.code, error: err.details || err.message, unreachable_total: stats.unreachable })
      bot.emit('unreachable', { call, error: err })
    } else {
      stats.rejected++
      log('error', 'intentd refused the call; nothing sent', { call, code: err.code, error: err.details || err.message })
    }
  }

  /** Queues texts for a room `afterMs` from now (in order, one lane per room). */
  const sayLater = (room, texts, afterMs, info, mentions = []) => {
    const plannedAt = Date.now() + Math.max(0, afterMs || 0)
    texts.forEach((text, i) => {
      // Only the last text (the reply itself) carries the mentions; notices go first, plain.
      const m = i === texts.length - 1 ? mentions : []
      lane(room.id).enqueue(plannedAt, async () => {
        try {
          if (m.length) await room.say(text, ...m)
          else await room.say(text)
          stats.sent++
          bot.emit('sent', { roomId: room.id, text, mentions: m.map(c => c.id), ...info })
        } catch (e) {
          stats.send_errors++
          log('error', 'room.say failed', { room: room.id, error: e.message })
        }
      }).catch(e => {
        if (e.name !== 'AbortError') log('error', 'send lane failed', { error: e.message })
      })
    })
  }

  const notifyAgents = async (template, vars) => {
    if (!template) return
    const text = fillTemplate(template, vars)
    for (const id of agents) {
      try {
        const c = await wechaty.Contact.find({ id })
        if (!c) continue
        await c.say(text)
        bot.emit('agent_notified', { agentId: id, text })
      } catch (e) {
        log('error', 'agent notice failed', { agent: id, error: e.message })
      }
    }
  }

  /**
   * Carries out a ClassifyResponse or Decision for a room. A Decision's `merged_user_ids`
   * (the member an immediate welcome greets) are @-mentioned; a ClassifyResponse names no
   * users (the reply addresses the asker by nickname in its text), so it mentions nobody but
   * the agents on a handoff.
   */
  const act = async (room, d, info) => {
    const text = d.reply?.text || ''
    const notices = (d.notices || []).filter(Boolean)
    const base = { action: d.action, reason: d.reason, ...info }
    const named = text ? await membersIn(room, d.merged_user_ids, info.cause) : []
    switch (d.action) {
      case 'REPLY':
      case 'CLARIFY':
        if (text || notices.length) sayLater(room, [...notices, text].filter(Boolean), Number(d.send_after_ms), base, named)
        break
      case 'HANDOFF': {
        // The agents first (they must act), then the users the decision names.
        const agentsHere = await agentsIn(room)
        const mentions = [...agentsHere, ...named.filter(c => !agentsHere.some(a => a.id === c.id))]
        if (text) sayLater(room, [...notices, text], Number(d.send_after_ms), base, mentions)
        await notifyAgents(cfg.texts.handoff_notice, { ...info.vars, reason: d.reason })
        break
      }
      case 'BLOCK':
        if (cfg.notify_agents_on_block) await notifyAgents(cfg.texts.block_notice, { ...info.vars, reason: d.reason })
        break
      default: // IGNORE: nothing to say
        break
    }
  }

  const onMessage = async (message) => {
    if (message.self()) return
    const room = message.room()
    if (!room) return // private chats are not group traffic
    const talker = message.talker()
    if (!talker) return
    if (agents.has(talker.id)) {
      try {
        await intentd.reportHumanReply({ bot_id: cfg.bot_id, chat_id: room.id, message_id: boundedId(message.id), at_ms: 0 })
        stats.human_replies++
      } catch (e) {
        failed('ReportHumanReply', e)
      }
      return
    }
    const chatName = await room.topic().catch(() => '')
    const user = await userOf(room, talker)
    const type = message.type()
    if (type === MESSAGE_TYPE.Url || type === MESSAGE_TYPE.MiniProgram) {
      let target = ''
      try {
        if (type === MESSAGE_TYPE.Url) target = (await message.toUrlLink()).url()
        else {
          const mp = await message.toMiniProgram()
          target = mp.appid() || mp.title() || ''
        }
      } catch (e) {
        log('warn', 'shared card without a readable target', { error: e.message })
      }
      // The operator maps known links / mini-programs to the card ids of replies.yml `cards`.
      const cardId = cfg.card_ids[target] || target || message.id
      await sendEvent(room, 'CARD_SHARED', talker, { target_id: boundedId(cardId), event_id: boundedId(message.id), chat_name: chatName, user })
      return
    }
    if (type !== MESSAGE_TYPE.Text) return
    const text = (await message.mentionText().catch(() => message.text())).trim()
    if (!text) return
    const req = {
      bot_id: cfg.bot_id,
      chat_id: room.id,
      message_id: boundedId(message.id),
      text,
      sent_at_ms: 0, // intentd stamps it on arrival with its own clock
      user,
      chat_name: chatName,
    }
    let res
    try {
      res = await intentd.classify(req)
    } catch (e) {
      failed('Classify', e)
      return
    }
    stats.classified++
    bot.emit('decision', { roomId: room.id, messageId: req.message_id, action: res.action, reason: res.reason, intent: res.intent })
    await act(room, res, {
      cause: 'reply',
      messageId: req.message_id,
      vars: { room: chatName, nickname: user.nickname, text, user_id: user.id },
    })
  }

  const sendEvent = async (room, type, contact, extra) => {
    const chatName = extra.chat_name ?? await room.topic().catch(() => '')
    const user = extra.user || await userOf(room, contact)
    const ev = { bot_id: cfg.bot_id, chat_id: room.id, type, user, at_ms: 0, target_id: '', ...extra, chat_name: chatName }
    let d
    try {
      d = await intentd.handleEvent(ev)
    } catch (e) {
      failed('HandleEvent', e)
      return
    }
    stats.events++
    bot.emit('decision', { roomId: room.id, event: type, userId: user.id, action: d.action, reason: d.reason })
    await act(room, d, { cause: 'event', event: type, vars: { room: chatName, nickname: user.nickname, text: '', user_id: user.id } })
  }

  const onJoin = async (room, invitees, _inviter, date) => {
    const at = (date instanceof Date ? date : new Date()).getTime()
    for (const c of invitees) {
      if (c.self()) continue
      await sendEvent(room, 'MEMBER_JOINED', c, { event_id: boundedId(`${room.id}:join:${c.id}:${at}`) })
    }
  }

  const onLeave = async (room, leavers, _remover, date) => {
    const at = (date instanceof Date ? date : new Date()).getTime()
    for (const c of leavers) {
      if (c.self()) continue
      await sendEvent(room, 'MEMBER_LEFT', c, { event_id: boundedId(`${room.id}:leave:${c.id}:${at}`) })
    }
  }

  // --- the Subscribe stream: one per bot, reconnecting with exponential backoff -------------
  let call = null
  let backoff = cfg.reconnect.min_ms
  let reconnectTimer = null

  const onOutbound = async (out) => {
    stats.outbound_received++
    bot.emit('outbound', out)
    const text = out.reply?.text || ''
    if (!text) return
    let room
    try {
      room = await wechaty.Room.find({ id: out.chat_id })
    } catch (e) {
      room = undefined
    }
    if (!room) {
      log('warn', 'proactive message for a room this account does not see', { chat_id: out.chat_id, kind: out.kind })
      return
    }
    // A welcome names the members it greets, a push its user: they are @-mentioned.
    const mentions = await membersIn(room, out.user_ids, out.kind)
    // intentd hands an item out when its time has come and has reserved its spacing slot.
    sayLater(room, [text], 0, { cause: 'outbound', kind: out.kind, ruleId: out.rule_id, outboundId: out.id }, mentions)
  }

  const scheduleReconnect = () => {
    if (abort.signal.aborted || reconnectTimer) return
    const wait = backoff
    backoff = Math.min(backoff * 2, cfg.reconnect.max_ms)
    log('info', 'Subscribe stream closed; reconnecting', { in_ms: wait })
    reconnectTimer = setTimeout(() => { reconnectTimer = null; openStream() }, wait)
  }

  const openStream = () => {
    if (abort.signal.aborted) return
    const c = intentd.subscribe({ bot_id: cfg.bot_id, chat_ids: [] })
    call = c
    let closed = false
    const lost = (why) => {
      if (closed) return
      closed = true
      if (abort.signal.aborted) return
      stats.stream_losses++
      bot.emit('stream', 'lost')
      if (why && !isUnreachable(why)) log('error', 'Subscribe refused', { code: why.code, error: why.details })
      scheduleReconnect()
    }
    c.on('metadata', () => {
      backoff = cfg.reconnect.min_ms
      stats.stream_connects++
      log('info', 'Subscribe stream open', { bot_id: cfg.bot_id })
      bot.emit('stream', 'connected')
    })
    c.on('data', (out) => { onOutbound(out).catch(e => log('error', 'outbound failed', { error: e.message })) })
    c.on('error', (e) => lost(e))
    c.on('end', () => lost(null))
  }

  const guard = (name, fn) => (...args) => fn(...args).catch(e => log('error', `${name} handler failed`, { error: e.message }))
  const handlers = {
    message: guard('message', onMessage),
    'room-join': guard('room-join', onJoin),
    'room-leave': guard('room-leave', onLeave),
  }
  for (const [ev, h] of Object.entries(handlers)) wechaty.on(ev, h)
  openStream()

  bot.stop = () => {
    abort.abort()
    if (reconnectTimer) clearTimeout(reconnectTimer)
    for (const [ev, h] of Object.entries(handlers)) wechaty.off(ev, h)
    if (call) call.cancel()
    if (!client) intentd.close()
  }
  return bot
}

function defaultLog (level, msg, fields = {}) {
  process.stderr.write(JSON.stringify({ ts: new Date().toISOString(), level, msg, ...fields }) + '\n')
}

async function main () {
  const file = process.argv[2] || process.env.BOT_CONFIG || 'bot.config.json'
  const cfg = loadConfig(file)
  const { WechatyBuilder } = await import('wechaty')
  const wechaty = WechatyBuilder.build({ name: `intentd-${cfg.bot_id}` })
  wechaty.on('scan', (qrcode, status) => defaultLog('info', 'scan the QR code to log in', { status, qrcode }))
  wechaty.on('login', (user) => defaultLog('info', 'logged in', { user: user.name() }))
  // Puppet errors arrive as 'error' events; unhandled, Node would end the process.
  wechaty.on('error', (e) => defaultLog('error', 'wechaty error', { error: e.message }))
  const bot = attachIntentdBot(wechaty, cfg)
  const stop = async () => {
    bot.stop()
    await wechaty.stop()
    process.exit(0)
  }
  process.on('SIGINT', stop)
  process.on('SIGTERM', stop)
  await wechaty.start()
}

if (process.argv[1] && path.resolve(process.argv[1]) === fileURLToPath(import.meta.url)) {
  main().catch((e) => {
    defaultLog('error', e.message)
    process.exit(1)
  })
}
