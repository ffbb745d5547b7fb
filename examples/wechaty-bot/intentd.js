// A thin gRPC client for intentd (proto/intentd/v1/intentd.proto), loaded at run time with
// @grpc/proto-loader so there is no code-generation step. Every call carries the bot's bearer
// token and a deadline; the caller decides what a failure means (the bot never sends then).
import path from 'node:path'
import { fileURLToPath } from 'node:url'

import * as grpc from '@grpc/grpc-js'
import * as protoLoader from '@grpc/proto-loader'

const here = path.dirname(fileURLToPath(import.meta.url))
export const DEFAULT_PROTO = path.resolve(here, '../../proto/intentd/v1/intentd.proto')

function loadPackage (protoPath) {
  const def = protoLoader.loadSync(protoPath, {
    keepCase: true, // field names as in the .proto (send_after_ms), like the other clients
    longs: Number, // int64 milliseconds fit a JS number
    enums: String, // 'REPLY', 'MEMBER_JOINED', ...
    defaults: true, // absent fields read as their proto3 default, not undefined
    oneofs: true,
  })
  return grpc.loadPackageDefinition(def).intentd.v1
}

export class IntentdClient {
  /**
   * @param {object} o
   * @param {string} o.addr        host:port of `intentd serve`
   * @param {string} o.token       the bot's bearer token
   * @param {string} [o.adminToken] only for setClock (tests and demos)
   * @param {string} [o.proto]     path to intentd.proto
   * @param {number} [o.deadlineMs] per-call deadline (default 5000)
   * @param {boolean} [o.tls]      use TLS with the system roots
   */
  constructor ({ addr, token, adminToken = '', proto = DEFAULT_PROTO, deadlineMs = 5000, tls = false }) {
    const pkg = loadPackage(proto)
    const creds = tls ? grpc.credentials.createSsl() : grpc.credentials.createInsecure()
    // Reconnect quickly after an intentd restart: the default backoff grows to 2 minutes.
    const options = {
      'grpc.initial_reconnect_backoff_ms': 200,
      'grpc.max_reconnect_backoff_ms': 5000,
    }
    this.service = new pkg.IntentService(addr, creds, options)
    this.admin = new pkg.AdminService(addr, creds, options)
    this.token = token
    this.adminToken = adminToken
    this.deadlineMs = deadlineMs
  }

  metadata (token) {
    const md = new grpc.Metadata()
    md.set('authorization', `Bearer ${token}`)
    return md
  }

  unary (stub, method, req, token = this.token) {
    return new Promise((resolve, reject) => {
      const deadline = new Date(Date.now() + this.deadlineMs)
      stub[method](req, this.metadata(token), { deadline }, (err, res) => {
        if (err) reject(err)
        else resolve(res)
      })
    })
  }

  classify (req) { return this.unary(this.service, 'Classify', req) }
  handleEvent (ev) { return this.unary(this.service, 'HandleEvent', ev) }
  reportHumanReply (req) { return this.unary(this.service, 'ReportHumanReply', req) }
  setClock (nowMs) { return this.unary(this.admin, 'SetClock', { now_ms: nowMs }, this.adminToken) }

  /** A server stream of Outbound messages (no deadline: it stays open). */
  subscribe (req) {
    return this.service.Subscribe(req, this.metadata(this.token))
  }

  close () {
    this.service.close()
    this.admin.close()
  }
}

/** gRPC status codes that mean "intentd is not there right now" rather than "bad request". */
export function isUnreachable (err) {
  const s = grpc.status
  return [s.UNAVAILABLE, s.DEADLINE_EXCEEDED, s.CANCELLED, s.UNKNOWN].includes(err?.code)
}

export { grpc }
