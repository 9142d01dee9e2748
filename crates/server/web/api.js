// The server's HTTP API and WebSocket, for the web client.

export class ApiError extends Error {
  constructor(status, body) {
    super((body && body.error) || `HTTP ${status}`);
    this.status = status;
    this.code = (body && body.code) || 'http_error';
    this.field = body && body.field;
  }
}

let token = localStorage.getItem('mesh.token');

export function sessionToken() {
  return token;
}

export function setSessionToken(value) {
  token = value;
  if (value) localStorage.setItem('mesh.token', value);
  else localStorage.removeItem('mesh.token');
}

/** Calls the JSON API; resolves to the parsed body (null when empty). */
export async function api(method, path, body) {
  const headers = {};
  if (token) headers.Authorization = `Bearer ${token}`;
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const res = await fetch(path, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
    cache: 'no-store',
  });
  const text = await res.text();
  let data = null;
  try {
    data = text ? JSON.parse(text) : null;
  } catch {
    data = null;
  }
  if (!res.ok) throw new ApiError(res.status, data);
  return data;
}

/**
 * The event connection: connects with a single-use ticket from
 * `POST /api/ws-ticket`, reconnects with backoff while `running`, and hands every
 * event to `onEvent`. `onState('open'|'closed')` reports the connection.
 */
export class EventSocket {
  constructor(onEvent, onState) {
    this.onEvent = onEvent;
    this.onState = onState;
    this.ws = null;
    this.running = false;
    this.retry = 0;
    this.timer = null;
  }

  start() {
    this.running = true;
    this.connect();
  }

  stop() {
    this.running = false;
    clearTimeout(this.timer);
    if (this.ws) this.ws.close(1000, 'bye');
    this.ws = null;
  }

  get open() {
    return this.ws !== null && this.ws.readyState === WebSocket.OPEN;
  }

  send(event) {
    if (!this.open) return false;
    this.ws.send(JSON.stringify(event));
    return true;
  }

  async connect() {
    if (!this.running) return;
    let ticket;
    try {
      ticket = (await api('POST', '/api/ws-ticket')).ticket;
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) {
        this.running = false;
        this.onState('unauthorized');
        return;
      }
      this.later();
      return;
    }
    const scheme = location.protocol === 'https:' ? 'wss:' : 'ws:';
    const ws = new WebSocket(`${scheme}//${location.host}/ws?ticket=${encodeURIComponent(ticket)}`);
    this.ws = ws;
    ws.addEventListener('open', () => {
      this.retry = 0;
      this.onState('open');
    });
    ws.addEventListener('message', (m) => {
      let event;
      try {
        event = JSON.parse(m.data);
      } catch {
        return;
      }
      this.onEvent(event);
    });
    ws.addEventListener('close', () => {
      if (this.ws !== ws) return;
      this.ws = null;
      this.onState('closed');
      this.later();
    });
  }

  later() {
    if (!this.running) return;
    const delay = Math.min(10000, 500 * 2 ** this.retry);
    this.retry += 1;
    clearTimeout(this.timer);
    this.timer = setTimeout(() => this.connect(), delay);
  }
}
