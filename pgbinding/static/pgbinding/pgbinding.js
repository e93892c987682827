/**
 * pgbinding.js: a dependency-free client of pgbinding's WebSocket protocol (docs/protocol.md).
 *
 * One socket carries every stream. Requests are matched to replies by `request_id`; live
 * subscriptions are kept as {@link Collection}s (pk -> row data) that survive reconnects: the
 * client reconnects with exponential backoff and jitter and resumes each collection from the
 * last `position` it received, so no change is lost or applied out of order.
 *
 * @example
 * import { connect } from "/static/pgbinding/pgbinding.js";
 * const client = connect(`ws://${location.host}/binding/`);
 * const items = client.subscribe("items", { filter: { status: "open" } });
 * items.on("change", ({ action, pk, data }) => console.log(action, pk, data));
 * await client.stream("items").update(1, { value: 5 });
 * @module pgbinding
 */

/** An error reply, a timeout, or a request cut off by a disconnect. */
export class PgBindingError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, errors?: Object<string, string[]>, action?: string|null,
   *   requestId?: string|number|null, stream?: string|null, code?: string|null}} [info]
   */
  constructor(message, info = {}) {
    super(message);
    this.name = "PgBindingError";
    /** HTTP-like status of the reply; 0 when there was no reply (timeout, disconnect). */
    this.status = info.status ?? 0;
    /** `{field or "__all__": [messages]}`, as the server sent them. */
    this.errors = info.errors ?? {};
    this.action = info.action ?? null;
    this.requestId = info.requestId ?? null;
    this.stream = info.stream ?? null;
    /** "timeout", "disconnected" or "closed" when no reply came; null for a server reply. */
    this.code = info.code ?? null;
  }
}

/** The messages of an `errors` object as one line: "field: message; message". */
export function formatErrors(errors) {
  return Object.entries(errors || {})
    .map(([field, list]) => (field === "__all__" ? "" : `${field}: `) + [].concat(list).join(" "))
    .join("; ");
}

/** A minimal event emitter: `on(name, fn)` returns a function that removes `fn`. */
class Emitter {
  #listeners = new Map();
  /** @param {string} name @param {Function} fn @returns {() => void} */
  on(name, fn) {
    if (!this.#listeners.has(name)) this.#listeners.set(name, new Set());
    this.#listeners.get(name).add(fn);
    return () => this.off(name, fn);
  }
  /** @param {string} name @param {Function} fn */
  off(name, fn) {
    this.#listeners.get(name)?.delete(fn);
  }
  /** Calls the listeners; one that throws does not stop the others (the error is rethrown later). */
  emit(name, ...args) {
    for (const fn of [...(this.#listeners.get(name) || [])]) {
      try {
        fn(...args);
      } catch (error) {
        queueMicrotask(() => {
          throw error;
        });
      }
    }
  }
}

/**
 * A live, Map-like view of the rows of one subscription, pk -> data. Events: "change"
 * `({action, pk, data})` for each row created, updated or deleted; "reset" `(collection)` when
 * the rows are replaced by a snapshot (first subscribe, resync, reload); "error" `(error)`.
 */
export class Collection extends Emitter {
  /** @type {Map<string|number, object>} */
  #rows = new Map();
  #client;
  #readyResolve;
  #readyReject;

  /** @param {Client} client @param {string} stream @param {{filter?: object, pk?: string|number}} [options] */
  constructor(client, stream, { filter, pk } = {}) {
    super();
    this.#client = client;
    this.stream = stream;
    this.filter = filter;
    this.pk = pk;
    /** The current subscription id (a new one per subscribe). */
    this.id = null;
    /** The last `position` received: the resume token. */
    this.position = null;
    /** True once a subscribe reply arrived on the current socket. */
    this.synced = false;
    this.closed = false;
    /** Resolves with the collection after its first snapshot; rejects if the subscribe is refused. */
    this.ready = new Promise((resolve, reject) => {
      this.#readyResolve = resolve;
      this.#readyReject = reject;
    });
    this.ready.catch(() => {}); // a refusal is also emitted as "error"
  }

  get size() { return this.#rows.size; }
  get(pk) { return this.#rows.get(pk); }
  has(pk) { return this.#rows.has(pk); }
  keys() { return this.#rows.keys(); }
  values() { return this.#rows.values(); }
  entries() { return this.#rows.entries(); }
  forEach(fn) { this.#rows.forEach((data, pk) => fn(data, pk, this)); }
  [Symbol.iterator]() { return this.#rows.entries(); }
  /** The rows as `[{pk, data}]`, in the order they were added (snapshots are in pk order). */
  rows() { return [...this.#rows].map(([pk, data]) => ({ pk, data })); }

  /** Sends `subscribe` (with `since` when resuming). Called by the client on every open. */
  _subscribe() {
    const client = this.#client;
    const id = client._nextId("s");
    if (this.id !== null) client._subs.delete(this.id);
    this.id = id;
    this.synced = false;
    client._subs.set(id, this);
    const payload = { filter: this.filter, pk: this.pk, since: this.position ?? undefined };
    // The reply is handled as it is read, before any event that follows it.
    client._call(this.stream, "subscribe", payload, { requestId: id, timeout: 0 },
      (data) => id === this.id && !this.closed && this.#onReply(data),
      (error) => {
        if (id !== this.id || this.closed || error.status === 0) return; // resumed on reconnect
        this.close(); // refused: the server will not send this view
        this.#readyReject(error);
        this.emit("error", error);
      },
    );
  }

  #onReply(data) {
    if (data.results) {
      this.#rows = new Map(data.results.map((row) => [row.pk, row.data]));
      this.position = data.position;
      this.synced = true;
      this.emit("reset", this);
    } else {
      this.position = data.position; // a resume: the replayed events were applied already
      this.synced = true;
    }
    this.#readyResolve(this);
  }

  /** Applies one event of this subscription. Applying an event twice is harmless. */
  _event(event) {
    const { action, pk } = event;
    if (action === "reload") {
      this.position = null; // the table was truncated: read it all again
      const old = this.id;
      this.#client._subs.delete(old);
      this.#client._request(this.stream, "unsubscribe", { subscription: old }).catch(() => {});
      this._subscribe();
      return;
    }
    if (action === "create" || action === "update") {
      const before = this.#rows.get(pk);
      this.#rows.set(pk, event.data);
      if (event.position !== undefined) this.position = event.position;
      if (before === undefined || JSON.stringify(before) !== JSON.stringify(event.data)) {
        this.emit("change", { action, pk, data: event.data });
      }
    } else if (action === "delete") {
      const before = this.#rows.get(pk);
      this.#rows.delete(pk);
      if (event.position !== undefined) this.position = event.position;
      if (before !== undefined) this.emit("change", { action, pk, data: event.data ?? before });
    }
  }

  /** Stops the subscription (sends `unsubscribe` if connected). Resolves when done. */
  close() {
    if (this.closed) return Promise.resolve();
    this.closed = true;
    const client = this.#client;
    client._collections.delete(this);
    client._subs.delete(this.id);
    if (client.state !== "open" || !this.id) return Promise.resolve();
    return client._request(this.stream, "unsubscribe", { subscription: this.id }).then(
      () => undefined,
      () => undefined,
    );
  }
}

/**
 * The requests of one stream. Each returns a Promise of the reply's `data`, or rejects with a
 * {@link PgBindingError}.
 */
export class Stream {
  constructor(client, name) {
    this.client = client;
    this.name = name;
  }
  create(data) { return this.client._request(this.name, "create", { data }); }
  update(pk, data) { return this.client._request(this.name, "update", { pk, data }); }
  delete(pk) { return this.client._request(this.name, "delete", { pk }); }
  retrieve(pk) { return this.client._request(this.name, "retrieve", { pk }); }
  /** @param {{filter?: object, ordering?: string|string[], page?: number, page_size?: number}} [query] */
  list({ filter, ordering, page, page_size } = {}) {
    return this.client._request(this.name, "list", { filter, ordering, page, page_size });
  }
  /** Same as `client.subscribe(name, options)`. */
  subscribe(options) { return this.client.subscribe(this.name, options); }
}

/**
 * A connection to one pgbinding socket, reconnecting until {@link Client#close}. Events:
 * "state" `(state, {delay?})` ("connecting" | "open" | "closed"; `delay`: ms until the next
 * attempt), "event" `(payload, stream)` for group events, "error" `(error)` for error replies
 * that match no request (a 413 or 429 refused before the request could be read).
 */
export class Client extends Emitter {
  /** @type {"connecting"|"open"|"closed"} */
  state = "closed";
  _pending = new Map(); // request_id -> {frame, sent, resolve, reject, timer}
  _subs = new Map(); // subscription id -> Collection
  _collections = new Set();
  #ws = null;
  #counter = 0;
  #attempt = 0;
  #timer = null;
  #stopped = false;

  constructor(url, options = {}) {
    super();
    this.url = url;
    this.options = { timeout: 10000, minDelay: 250, maxDelay: 10000, ...options };
    this.WebSocket = options.WebSocket ?? globalThis.WebSocket;
    if (!this.WebSocket) throw new TypeError("no WebSocket: pass options.WebSocket");
    this.#open();
  }

  /** @param {string} name @returns {Stream} */
  stream(name) { return new Stream(this, name); }

  /**
   * A live collection of the rows of `stream` matching `filter` (or the one row `pk`).
   * @param {string} stream
   * @param {{filter?: object, pk?: string|number}} [options]
   * @returns {Collection}
   */
  subscribe(stream, { filter, pk } = {}) {
    const collection = new Collection(this, stream, { filter, pk });
    this._collections.add(collection);
    if (this.state === "open") collection._subscribe();
    return collection;
  }

  /** Closes the socket for good; pending requests reject with code "closed". */
  close() {
    this.#stopped = true;
    clearTimeout(this.#timer);
    const ws = this.#ws;
    this.#ws = null;
    if (ws) ws.close(1000);
    this.#fail((r) => true, "closed", "the client was closed");
    this._subs.clear();
    this.#setState("closed");
  }

  _nextId(prefix) { return `${prefix}${++this.#counter}`; }

  /**
   * Sends a request; resolves with the reply's `data`. `timeout: 0` waits forever.
   * @param {string} stream @param {string} action @param {object} fields
   * @param {{requestId?: string, timeout?: number}} [options]
   */
  _request(stream, action, fields, options) {
    return new Promise((resolve, reject) => this._call(stream, action, fields, options, resolve, reject));
  }

  /**
   * Like `_request` with callbacks, called synchronously as the reply is read.
   * @param {string} stream @param {string} action @param {object} fields
   * @param {{requestId?: string, timeout?: number}} options
   * @param {(data: any) => void} resolve @param {(error: PgBindingError) => void} reject
   */
  _call(stream, action, fields, { requestId, timeout = this.options.timeout } = {}, resolve, reject) {
    const request_id = requestId ?? this._nextId("r");
    const payload = { action, request_id };
    for (const [key, value] of Object.entries(fields)) if (value !== undefined) payload[key] = value;
    const info = { action, stream, requestId: request_id };
    if (this.#stopped) {
      reject(new PgBindingError("the client is closed", { code: "closed", ...info }));
      return;
    }
    const entry = { frame: JSON.stringify({ stream, payload }), sent: false, resolve, reject, action, stream };
    if (timeout > 0) {
      entry.timer = setTimeout(() => {
        this._pending.delete(request_id);
        const message = `no reply to ${action} on ${stream} within ${timeout} ms`;
        reject(new PgBindingError(message, { code: "timeout", errors: { __all__: [message] }, ...info }));
      }, timeout);
    }
    this._pending.set(request_id, entry);
    if (this.state === "open") this.#send(entry); // else sent when the socket opens
  }

  #send(entry) {
    entry.sent = true;
    this.#ws.send(entry.frame);
  }

  #setState(state, info = {}) {
    if (state === this.state && state !== "closed") return;
    this.state = state;
    this.emit("state", state, info);
  }

  #open() {
    this.#setState("connecting");
    let ws;
    try {
      ws = new this.WebSocket(this.url);
    } catch (error) {
      queueMicrotask(() => this.#onClose(null));
      return;
    }
    this.#ws = ws;
    ws.onopen = () => ws === this.#ws && this.#onOpen();
    ws.onmessage = (message) => ws === this.#ws && this.#onMessage(message.data);
    ws.onclose = () => ws === this.#ws && this.#onClose(ws);
    ws.onerror = () => {}; // a close follows
  }

  #onOpen() {
    this.#attempt = 0;
    this.#setState("open");
    for (const entry of this._pending.values()) if (!entry.sent) this.#send(entry);
    for (const collection of this._collections) collection._subscribe();
  }

  #onMessage(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    const payload = frame?.payload;
    if (!payload || typeof payload !== "object") return;
    if (payload.status !== undefined) return this.#onReply(frame.stream, payload);
    if (payload.subscription !== undefined) {
      this._subs.get(String(payload.subscription))?._event(payload);
      return;
    }
    this.emit("event", payload, frame.stream);
  }

  #onReply(stream, p) {
    const entry = p.request_id === null ? undefined : this._pending.get(String(p.request_id));
    const ok = p.status >= 200 && p.status < 300;
    if (!entry) {
      if (!ok) this.emit("error", this.#replyError(stream, p));
      return;
    }
    this._pending.delete(String(p.request_id));
    clearTimeout(entry.timer);
    if (ok) entry.resolve(p.data);
    else entry.reject(this.#replyError(stream, p));
  }

  #replyError(stream, p) {
    const message = `${p.status} on ${p.action ?? "a request"}: ${formatErrors(p.errors)}`;
    return new PgBindingError(message, {
      status: p.status, errors: p.errors, action: p.action, requestId: p.request_id, stream,
    });
  }

  /** Rejects the pending requests for which `which(entry)` holds. */
  #fail(which, code, message) {
    for (const [id, entry] of [...this._pending]) {
      if (!which(entry)) continue;
      this._pending.delete(id);
      clearTimeout(entry.timer);
      const text = `${entry.action} on ${entry.stream}: ${message}`;
      entry.reject(new PgBindingError(text, {
        code, errors: { __all__: [text] }, action: entry.action, stream: entry.stream, requestId: id,
      }));
    }
  }

  #onClose(ws) {
    if (ws !== this.#ws || this.#stopped) return;
    this.#ws = null;
    // Requests already sent may or may not have been done: their callers must decide.
    // Requests not sent yet wait for the next socket (or their timeout).
    this.#fail((entry) => entry.sent, "disconnected", "disconnected before the reply");
    this._subs.clear();
    for (const collection of this._collections) collection.synced = false;
    const { minDelay, maxDelay } = this.options;
    const delay = Math.min(maxDelay, minDelay * 2 ** this.#attempt++ * (1 + Math.random()));
    this.#setState("closed", { delay });
    this.#timer = setTimeout(() => this.#open(), delay);
  }
}

/**
 * Opens a client on `url` (a ws:// or wss:// URL).
 * @param {string} url
 * @param {{WebSocket?: Function, timeout?: number, minDelay?: number, maxDelay?: number}} [options]
 *   `timeout`: ms to wait for a reply (default 10000); `minDelay`/`maxDelay`: the reconnect
 *   backoff's bounds (default 250 / 10000 ms); `WebSocket`: the constructor to use (default
 *   `globalThis.WebSocket`).
 * @returns {Client}
 */
export function connect(url, options) {
  return new Client(url, options);
}
