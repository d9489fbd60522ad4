#!/usr/bin/env node
// Line-oriented y-websocket test client for confab's Rust black-box tests.
//
// Protocol: one JSON command per line on stdin, exactly one JSON reply line per
// command on stdout, in order. Diagnostics go to stderr only, so the Rust side
// can treat every stdout line as a reply. See README.md for the command list.

import readline from 'node:readline'
import * as Y from 'yjs'
import { WebsocketProvider } from 'y-websocket'
import WebSocket from 'ws'

// Libraries (y-websocket, lib0) occasionally console.log; stdout is reserved
// for replies, so send all console output to stderr.
console.log = console.info = console.debug = console.error

const log = (...args) => console.error('[yjs-client]', ...args)

/** Per-process state: one client drives one Y.Doc / one file. */
const state = {
  doc: null,
  text: null,
  provider: null,
  url: null,
  // Every socket close we saw, server-initiated or local, in order. Tests
  // assert on codes/reasons (e.g. a revoked permission), so keep them all
  // rather than only the last.
  closeEvents: [],
  // ws reports a rejected upgrade (401/403/404) as an error, not a close code.
  errors: [],
  // Updates applied to the doc that came from the server (sync step 2 and
  // incremental updates), as opposed to local edits.
  updatesReceived: 0,
  // Raw WebSocket frames received, across reconnects.
  messagesReceived: 0,
  // Number of sockets opened, to observe reconnect behaviour.
  socketsOpened: 0,
  // Most recent socket, so `close` can wait for the close handshake to
  // finish before exiting (otherwise the awareness "left" frame can be lost).
  lastSocket: null
}

/** Listeners re-checked whenever the doc or awareness changes. */
const waiters = new Set()
const notifyWaiters = () => { for (const w of waiters) w() }

/**
 * An error whose extra fields are merged into the `{"ok":false}` reply, so the
 * Rust side can inspect e.g. the current text without parsing the message.
 */
class CmdError extends Error {
  constructor (message, extra = {}) {
    super(message)
    this.extra = extra
  }
}

/**
 * Resolve when `check()` returns a truthy value, re-evaluated on every doc or
 * awareness change; after `timeoutMs` reject with the CmdError `onTimeout()`
 * builds.
 */
const waitFor = (check, timeoutMs, onTimeout) => new Promise((resolve, reject) => {
  const first = check()
  if (first) return resolve(first)
  let timer = null
  const waiter = () => {
    const v = check()
    if (v) {
      clearTimeout(timer)
      waiters.delete(waiter)
      resolve(v)
    }
  }
  timer = setTimeout(() => {
    waiters.delete(waiter)
    reject(onTimeout())
  }, timeoutMs)
  waiters.add(waiter)
})

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))

/**
 * A `ws` WebSocket class bound to fixed handshake headers. The provider only
 * ever calls `new WS(url, protocols)`, so extra headers (Authorization) have to
 * be baked into the class it is given as WebSocketPolyfill.
 */
const makeSocketClass = (headers) => class ConfabSocket extends WebSocket {
  constructor (url, protocols) {
    super(url, protocols, { headers })
    state.socketsOpened++
    state.lastSocket = this
    // addEventListener rather than on*: the provider owns the on* handlers
    // and nulls them when it drops a socket.
    this.addEventListener('message', () => { state.messagesReceived++ })
    this.addEventListener('close', (ev) => {
      state.closeEvents.push({
        code: ev.code,
        reason: String(ev.reason ?? ''),
        was_clean: ev.wasClean,
        // true when we closed it (disconnect/close/idle watchdog), so tests can
        // tell those apart from a close the server chose.
        local: !!this.closedLocally
      })
      log('socket closed', ev.code, ev.reason)
      notifyWaiters()
    })
    this.addEventListener('error', (ev) => {
      const message = ev?.message ?? ev?.error?.message ?? String(ev)
      state.errors.push(message)
      log('socket error', message)
      notifyWaiters()
    })
  }
}

const requireDoc = () => {
  if (!state.doc) throw new Error('not connected: send connect first')
  return state.doc
}

const statusSnapshot = () => {
  const p = state.provider
  return {
    url: p ? p.url : state.url,
    client_id: state.doc ? state.doc.clientID : null,
    connected: !!p?.wsconnected,
    connecting: !!p?.wsconnecting,
    synced: !!p?.synced,
    should_connect: !!p?.shouldConnect,
    sockets_opened: state.socketsOpened,
    close_events: state.closeEvents,
    errors: state.errors,
    updates_received: state.updatesReceived,
    messages_received: state.messagesReceived
  }
}

/** Other clients' awareness states (the local client is excluded). */
const otherAwareness = () => {
  const p = state.provider
  if (!p) return []
  const own = state.doc.clientID
  const out = []
  for (const [clientId, st] of p.awareness.getStates()) {
    if (clientId !== own && st != null) out.push({ client_id: clientId, state: st })
  }
  return out
}

const waitSynced = async (timeoutMs) => {
  const p = state.provider
  await waitFor(() => p.synced, timeoutMs, () => {
    const status = statusSnapshot()
    return new CmdError(`did not sync within ${timeoutMs} ms: ${JSON.stringify(status)}`, { status })
  })
}

/**
 * Pick an insert position that does not split a UTF-16 surrogate pair:
 * Y.Text indexes by UTF-16 code unit, and a split pair corrupts the text.
 */
const safeIndex = (str, idx) => {
  if (idx > 0 && idx < str.length) {
    const c = str.charCodeAt(idx)
    if (c >= 0xdc00 && c <= 0xdfff) return idx + 1
  }
  return idx
}

const commands = {
  async connect (cmd) {
    const timeoutMs = cmd.timeout_ms ?? 10000
    if (state.provider) {
      // A second connect without a url resumes the existing provider after
      // `disconnect`, keeping the doc (offline edits then merge on resync).
      if (cmd.url) throw new Error('already have a provider; connect without url reconnects it')
      state.provider.connect()
      await waitSynced(timeoutMs)
      return { client_id: state.doc.clientID }
    }
    if (typeof cmd.url !== 'string') throw new Error('connect needs a url')
    // The provider builds `${serverUrl}/${roomname}?${params}`, so the last
    // path segment of the target URL becomes the "room".
    const cut = cmd.url.lastIndexOf('/')
    if (cut < 0 || cut === cmd.url.length - 1) throw new Error(`cannot split url: ${cmd.url}`)
    const serverUrl = cmd.url.slice(0, cut)
    const roomname = cmd.url.slice(cut + 1)

    const headers = {}
    if (cmd.token) headers.Authorization = `Bearer ${cmd.token}`
    const params = {}
    if (cmd.ticket) params.ticket = cmd.ticket

    const doc = new Y.Doc()
    state.doc = doc
    state.text = doc.getText('content')
    state.url = cmd.url
    doc.on('update', (_update, origin) => {
      if (origin === state.provider) state.updatesReceived++
      notifyWaiters()
    })

    const provider = new WebsocketProvider(serverUrl, roomname, doc, {
      params,
      protocols: Array.isArray(cmd.protocols) ? cmd.protocols : [],
      WebSocketPolyfill: makeSocketClass(headers),
      // Cross-"tab" sync would let two drivers in one process bypass the
      // server; we only want to test the server path.
      disableBc: true,
      // Stock behaviour reconnects except on 4400-4499; tests that assert a
      // rejection can opt out to avoid a reconnect loop.
      ...(cmd.reconnect === false ? { shouldReconnect: () => false } : {})
    })
    state.provider = provider
    provider.awareness.on('change', notifyWaiters)
    provider.on('status', ({ status }) => log('status', status))
    provider.on('sync', notifyWaiters)
    // The provider reports a close it initiated itself with a null event,
    // before its socket's own close event fires; tag that socket.
    provider.on('connection-close', (ev) => {
      if (ev === null && provider.ws) provider.ws.closedLocally = true
    })
    if (cmd.client_name) {
      // A recognisable default awareness state; awareness_set replaces it.
      // This also matters for visibility: the Awareness constructor's implicit
      // `{}` state has clock 0, which peers ignore (they only accept a clock
      // above the one they know, and an unknown client counts as 0), so a
      // client that never sets a state is invisible to others.
      provider.awareness.setLocalStateField('user', { name: cmd.client_name })
    }
    await waitSynced(timeoutMs)
    return { client_id: doc.clientID }
  },

  async insert (cmd) {
    requireDoc()
    state.text.insert(cmd.index, String(cmd.text))
    return {}
  },

  async delete (cmd) {
    requireDoc()
    state.text.delete(cmd.index, cmd.length)
    return {}
  },

  // Inserts `size` characters at the start and deletes them again, `count` times: two
  // updates per round on the wire, and a document that does not grow.
  async churn (cmd) {
    const doc = requireDoc()
    const chunk = 'x'.repeat(cmd.size)
    for (let i = 0; i < cmd.count; i++) {
      doc.transact(() => state.text.insert(0, chunk))
      doc.transact(() => state.text.delete(0, chunk.length))
      if (i % 32 === 31) await sleep(0)
    }
    return { text: state.text.toString() }
  },

  async type (cmd) {
    const doc = requireDoc()
    const delay = cmd.delay_ms ?? 5
    const chars = [...String(cmd.text)] // by code point, never half a surrogate pair
    for (const ch of chars) {
      const cur = state.text.toString()
      let idx
      if (cmd.at === 'end') idx = cur.length
      else if (cmd.at === 'start') idx = 0
      else idx = safeIndex(cur, Math.floor(Math.random() * (cur.length + 1)))
      // One transaction per keystroke, so each character is its own update
      // on the wire and interleaves with the peer's updates.
      doc.transact(() => state.text.insert(idx, ch))
      if (delay > 0) await sleep(delay)
    }
    return { text: state.text.toString() }
  },

  async text () {
    requireDoc()
    return { text: state.text.toString() }
  },

  async wait_text (cmd) {
    requireDoc()
    const timeoutMs = cmd.timeout_ms ?? 10000
    let check
    // `length` counts UTF-16 code units, like Y.Text itself.
    if (cmd.equals !== undefined) check = () => state.text.toString() === cmd.equals
    else if (cmd.length !== undefined) check = () => state.text.length === cmd.length
    else if (cmd.contains !== undefined) check = () => state.text.toString().includes(cmd.contains)
    else throw new Error('wait_text needs equals, length or contains')
    await waitFor(check, timeoutMs, () => {
      const text = state.text.toString()
      return new CmdError(`timeout after ${timeoutMs} ms; current text: ${JSON.stringify(text)}`, { text })
    })
    return { text: state.text.toString() }
  },

  async awareness_set (cmd) {
    requireDoc()
    state.provider.awareness.setLocalState(cmd.state ?? null)
    return {}
  },

  async awareness () {
    requireDoc()
    return { states: otherAwareness() }
  },

  async wait_awareness (cmd) {
    requireDoc()
    const timeoutMs = cmd.timeout_ms ?? 10000
    await waitFor(() => otherAwareness().length === cmd.count, timeoutMs, () => {
      const states = otherAwareness()
      return new CmdError(`timeout after ${timeoutMs} ms; other states: ${JSON.stringify(states)}`, { states })
    })
    return { states: otherAwareness() }
  },

  async status () {
    return statusSnapshot()
  },

  async disconnect () {
    requireDoc()
    state.provider.disconnect()
    return {}
  },

  async close () {
    await shutdown()
    return {}
  }
}

/**
 * Destroy the provider and give the socket a moment to finish its close
 * handshake, so the server sees our awareness removal and a clean close.
 */
let shutDown = false
const shutdown = async () => {
  if (shutDown) return
  shutDown = true
  const p = state.provider
  if (!p) return
  const ws = state.lastSocket
  p.destroy()
  if (ws && ws.readyState !== WebSocket.CLOSED) {
    await Promise.race([
      new Promise((resolve) => ws.once('close', resolve)),
      sleep(1000)
    ])
  }
}

const reply = (obj) => new Promise((resolve) => {
  process.stdout.write(JSON.stringify(obj) + '\n', resolve)
})

const handle = async (line) => {
  let cmd
  try {
    cmd = JSON.parse(line)
  } catch (e) {
    return reply({ ok: false, error: `bad json: ${e.message}` })
  }
  const fn = commands[cmd?.cmd]
  if (!fn || !Object.hasOwn(commands, cmd.cmd)) {
    return reply({ ok: false, error: `unknown cmd: ${JSON.stringify(cmd?.cmd)}` })
  }
  try {
    const result = await fn(cmd)
    await reply({ ok: true, ...result })
  } catch (e) {
    await reply({ ...(e?.extra ?? {}), ok: false, error: e?.message ?? String(e) })
  }
  if (cmd.cmd === 'close') process.exit(0)
}

// Commands run strictly one after another so replies stay in command order;
// doc/awareness events keep flowing while a command awaits.
let chain = Promise.resolve()
const rl = readline.createInterface({ input: process.stdin, terminal: false })
rl.on('line', (line) => {
  if (line.trim() === '') return
  chain = chain.then(() => handle(line))
})
rl.on('close', () => {
  chain = chain.then(shutdown).then(() => process.exit(0))
})
