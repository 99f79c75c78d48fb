// The WebSocket half of the protocol in docs/protocol.md: one socket, JSON text frames.
//
// `Signaling` only moves messages. It knows two things about the protocol: a request such as
// `auth` or `join` is answered by one message of a known type or by an `error`, and a socket
// that has gone quiet is dead (we ping, the server answers `pong`).

/** An error the server sent (`{"type":"error","code",...}`), or one of ours with a code. */
export class SignalError extends Error {
  constructor(code, message) {
    super(message || code);
    this.name = 'SignalError';
    this.code = code;
  }
}

const PING_EVERY_MS = 10_000;
const SILENCE_LIMIT_MS = 25_000;

export function defaultSocketUrl() {
  const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
  return `${scheme}://${location.host}/ws`;
}

export class Signaling {
  /**
   * @param {string} url ws(s):// address of /ws
   * @param {{onMessage: (msg: object) => void, onClose: (info: {code: number, reason: string, byUs: boolean}) => void}} handlers
   */
  constructor(url, handlers) {
    this.url = url;
    this.handlers = handlers;
    this.ws = null;
    this.waiters = [];
    this.closedByUs = false;
    this.lastHeard = 0;
    this.pingTimer = 0;
  }

  /** Opens the socket. Rejects with SignalError('unreachable') if it cannot be opened. */
  open(timeoutMs = 8000) {
    return new Promise((resolve, reject) => {
      let settled = false;
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch (e) {
        reject(new SignalError('unreachable', String(e)));
        return;
      }
      this.ws = ws;
      const timer = setTimeout(() => {
        if (settled) return;
        settled = true;
        this.closedByUs = true;
        ws.close();
        reject(new SignalError('unreachable', 'timed out opening the WebSocket'));
      }, timeoutMs);
      ws.onopen = () => {
        if (settled) return;
        settled = true;
        clearTimeout(timer);
        this.lastHeard = performance.now();
        this.pingTimer = setInterval(() => this.keepAlive(), PING_EVERY_MS);
        resolve();
      };
      ws.onmessage = (ev) => this.receive(ev.data);
      ws.onerror = () => {
        // 'close' follows 'error'; the reason is reported there.
      };
      ws.onclose = (ev) => {
        clearInterval(this.pingTimer);
        clearTimeout(timer);
        const err = new SignalError('connection_lost', `WebSocket closed (${ev.code})`);
        for (const w of this.waiters.splice(0)) w.reject(err);
        if (!settled) {
          settled = true;
          reject(new SignalError('unreachable', `WebSocket closed before it opened (${ev.code})`));
          return;
        }
        this.handlers.onClose({ code: ev.code, reason: ev.reason, byUs: this.closedByUs });
      };
    });
  }

  get isOpen() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  send(msg) {
    if (!this.isOpen) return false;
    this.ws.send(JSON.stringify(msg));
    return true;
  }

  /**
   * Sends `msg` and resolves with the first message whose type is in `replyTypes`; rejects with
   * a SignalError if an `error` arrives first (or the socket closes, or nothing comes in time).
   */
  request(msg, replyTypes, timeoutMs = 10_000) {
    return new Promise((resolve, reject) => {
      const waiter = {
        types: replyTypes,
        resolve: (m) => {
          clearTimeout(waiter.timer);
          resolve(m);
        },
        reject: (e) => {
          clearTimeout(waiter.timer);
          reject(e);
        },
      };
      waiter.timer = setTimeout(() => {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        reject(new SignalError('timeout', `no ${replyTypes.join('/')} from the server`));
      }, timeoutMs);
      this.waiters.push(waiter);
      if (!this.send(msg)) {
        this.waiters = this.waiters.filter((w) => w !== waiter);
        waiter.reject(new SignalError('connection_lost', 'the WebSocket is not open'));
      }
    });
  }

  receive(data) {
    this.lastHeard = performance.now();
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      console.warn('switchboard: ignoring a non-JSON frame');
      return;
    }
    if (!msg || typeof msg.type !== 'string') return;
    if (msg.type === 'pong') return;
    // The oldest waiter gets the reply; an `error` answers the oldest request too, unless it
    // cannot be an answer to any request (bad_message is about a message we did not await).
    const idx = this.waiters.findIndex((w) => w.types.includes(msg.type));
    if (idx >= 0) {
      const [w] = this.waiters.splice(idx, 1);
      w.resolve(msg);
      return;
    }
    if (msg.type === 'error' && this.waiters.length > 0 && msg.code !== 'bad_message') {
      const w = this.waiters.shift();
      w.reject(new SignalError(msg.code, msg.message));
      // Errors that end the session are reported to the owner as well.
      if (!['unauthorized', 'token_expired'].includes(msg.code)) return;
    }
    this.handlers.onMessage(msg);
  }

  keepAlive() {
    if (!this.isOpen) return;
    if (performance.now() - this.lastHeard > SILENCE_LIMIT_MS) {
      // The server stopped answering pings: treat the socket as lost.
      console.warn('switchboard: the server went quiet; closing the socket');
      this.ws.close(4000, 'no pong');
      return;
    }
    this.send({ type: 'ping' });
  }

  close() {
    this.closedByUs = true;
    clearInterval(this.pingTimer);
    for (const w of this.waiters.splice(0)) w.reject(new SignalError('closed', 'closed'));
    if (this.ws && this.ws.readyState <= WebSocket.OPEN) this.ws.close(1000, 'bye');
  }
}
