// The sync feed for the folder on screen: a WebSocket on /api/v1/sync (the session cookie
// authenticates the handshake). It resumes from the last seq it saw after a drop, and on
// `resync_required` (close 4000) asks the page to list again before resuming from the seq the
// server names. Close 4401 means the session's token died.

const RESYNC = 4000;
const TOKEN_INVALID = 4401;

export class Feed {
  // handlers: { ready(seq), event(ev), resync(), unauthorized(), status(text) }
  constructor(prefix, handlers) {
    this.prefix = prefix;
    this.h = handlers;
    this.seq = null;
    this.ws = null;
    this.stopped = false;
    this.backoff = 250;
    this.timer = null;
    this.readySent = false;
  }

  url() {
    const q = new URLSearchParams();
    if (this.prefix) q.set('prefix', this.prefix);
    if (this.seq !== null) q.set('since', String(this.seq));
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    return `${scheme}//${location.host}/api/v1/sync?${q}`;
  }

  start() {
    if (this.stopped) return;
    let ws;
    try {
      ws = new WebSocket(this.url());
    } catch (_) {
      this.retry();
      return;
    }
    this.ws = ws;
    ws.onmessage = (m) => {
      let msg;
      try { msg = JSON.parse(m.data); } catch (_) { return; }
      if (msg.kind === 'hello') {
        if (this.seq === null) {
          this.seq = msg.latest_seq;
          // Listed without a feed (it could not connect): list again from here on.
          if (this.readySent) this.h.resync();
        }
        this.backoff = 250;
        this.h.status('live');
        if (!this.readySent) {
          this.readySent = true;
          this.h.ready(this.seq);
        }
        return;
      }
      if (msg.kind === 'resync_required') {
        this.seq = msg.latest_seq;
        this.h.resync();
        return;
      }
      if (typeof msg.seq === 'number') {
        if (this.seq !== null && msg.seq <= this.seq) return;
        this.seq = msg.seq;
        this.h.event(msg);
      }
    };
    ws.onclose = (c) => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (this.stopped) return;
      if (c.code === TOKEN_INVALID) {
        this.h.status('offline');
        this.h.unauthorized();
        return;
      }
      // 4000: the resync frame came first and moved `seq`; reconnect from there.
      this.h.status(c.code === RESYNC ? 'resyncing' : 'reconnecting');
      this.retry();
    };
    ws.onerror = () => { /* onclose follows */ };
  }

  retry() {
    if (this.stopped) return;
    clearTimeout(this.timer);
    const wait = this.backoff;
    this.backoff = Math.min(this.backoff * 2, 5000);
    this.timer = setTimeout(() => this.start(), wait);
    // The page must still get its listing if the feed cannot connect at all.
    if (!this.readySent) {
      this.readySent = true;
      this.h.ready(null);
    }
  }

  stop() {
    this.stopped = true;
    clearTimeout(this.timer);
    if (this.ws) {
      const ws = this.ws;
      this.ws = null;
      ws.close(1000);
    }
  }
}
