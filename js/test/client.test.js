// Unit tests of pgbinding.js against a fake WebSocket: node --test js/test/
import { test } from "node:test";
import assert from "node:assert/strict";
import { connect, Collection, PgBindingError } from "../../pgbinding/static/pgbinding/pgbinding.js";

/** Records what the client sends; the test plays the server with open/push/drop. */
class FakeWebSocket {
  static instances = [];
  static CONNECTING = 0;
  static OPEN = 1;
  static CLOSED = 3;

  constructor(url) {
    this.url = url;
    this.readyState = 0;
    this.sent = [];
    FakeWebSocket.instances.push(this);
  }
  send(text) {
    assert.equal(this.readyState, 1, "send on a socket that is not open");
    this.sent.push(JSON.parse(text));
  }
  close() {
    this.drop();
  }
  // --- the server's side ---
  open() {
    this.readyState = 1;
    this.onopen?.({});
  }
  push(stream, payload) {
    this.onmessage?.({ data: JSON.stringify({ stream, payload }) });
  }
  drop() {
    if (this.readyState === 3) return;
    this.readyState = 3;
    this.onclose?.({ code: 1006 });
  }
  /** The payloads sent, optionally of one action. */
  payloads(action) {
    return this.sent.map((f) => f.payload).filter((p) => !action || p.action === action);
  }
  last() {
    return this.sent.at(-1).payload;
  }
}

const ROW1 = { name: "widget", value: 1, status: "open" };
const ROW2 = { name: "gadget", value: 7, status: "open" };
const tick = () => new Promise((resolve) => setImmediate(resolve));
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function setup(options = {}) {
  FakeWebSocket.instances = [];
  const client = connect("ws://test/binding/", {
    WebSocket: FakeWebSocket,
    minDelay: 5,
    maxDelay: 40,
    ...options,
  });
  const ws = () => FakeWebSocket.instances.at(-1);
  return { client, ws };
}

async function waitFor(predicate, ms = 2000) {
  const deadline = Date.now() + ms;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error("timed out waiting");
    await sleep(2);
  }
}

/** Subscribes and answers with a snapshot; returns the collection. */
async function subscribed(client, ws, results = [{ pk: 1, data: ROW1 }], options = {}) {
  const collection = client.subscribe("items", options);
  const sub = ws().last();
  assert.equal(sub.action, "subscribe");
  ws().push("items", {
    action: "subscribe", request_id: sub.request_id, status: 200,
    data: { subscription: sub.request_id, results, position: "10", resync: false },
  });
  await collection.ready;
  return collection;
}

test("requests are sent once open and replies are matched by request_id", async () => {
  const { client, ws } = setup();
  const states = [];
  client.on("state", (state) => states.push(state));
  assert.equal(client.state, "connecting");
  const items = client.stream("items");
  const a = items.retrieve(1);
  const b = items.list({ filter: { status: "open" }, page_size: 5 });
  assert.equal(ws().sent.length, 0); // queued until the socket opens
  ws().open();
  assert.equal(client.state, "open");
  assert.deepEqual(states, ["open"]);
  const [ra, rb] = ws().payloads();
  assert.deepEqual(ra, { action: "retrieve", request_id: ra.request_id, pk: 1 });
  assert.deepEqual(rb, { action: "list", request_id: rb.request_id, filter: { status: "open" }, page_size: 5 });
  assert.notEqual(ra.request_id, rb.request_id);
  // Replies in the other order, with an event and a reply to nobody in between.
  ws().push("items", { action: "list", request_id: rb.request_id, status: 200, data: { results: [], count: 0 } });
  ws().push("items", { action: "update", pk: 1, data: ROW1, position: "3" });
  ws().push("items", { action: "list", request_id: "someone-else", status: 200, data: {} });
  ws().push("items", { action: "retrieve", request_id: ra.request_id, status: 200, data: { pk: 1, data: ROW1 } });
  assert.deepEqual(await b, { results: [], count: 0 });
  assert.deepEqual(await a, { pk: 1, data: ROW1 });

  const c = items.create({ name: "x" });
  const u = items.update(1, { value: 2 });
  const d = items.delete(2);
  assert.deepEqual(ws().payloads().slice(2).map((p) => [p.action, p.pk, p.data]), [
    ["create", undefined, { name: "x" }], ["update", 1, { value: 2 }], ["delete", 2, undefined],
  ]);
  for (const p of ws().payloads().slice(2)) {
    ws().push("items", { action: p.action, request_id: p.request_id, status: p.action === "create" ? 201 : 200, data: { pk: p.pk ?? 9 } });
  }
  assert.deepEqual(await Promise.all([c, u, d]), [{ pk: 9 }, { pk: 1 }, { pk: 2 }]);
  client.close();
});

test("an error reply rejects with a PgBindingError", async () => {
  const { client, ws } = setup();
  ws().open();
  const promise = client.stream("items").update(1, { value: "lots" });
  const { request_id } = ws().last();
  ws().push("items", { action: "update", request_id, status: 400, errors: { value: ["Enter a whole number."] } });
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof PgBindingError);
    assert.equal(error.status, 400);
    assert.deepEqual(error.errors, { value: ["Enter a whole number."] });
    assert.equal(error.action, "update");
    assert.equal(error.requestId, request_id);
    assert.match(error.message, /value: Enter a whole number/);
    return true;
  });
  // An error reply that matches no request is emitted as "error".
  const errors = [];
  client.on("error", (e) => errors.push(e));
  ws().push(null, { action: null, request_id: null, status: 429, errors: { __all__: ["slow down"] } });
  assert.equal(errors.length, 1);
  assert.equal(errors[0].status, 429);
  client.close();
});

test("a request without a reply times out", async () => {
  const { client, ws } = setup({ timeout: 20 });
  ws().open();
  const promise = client.stream("items").retrieve(1);
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof PgBindingError);
    assert.equal(error.status, 0);
    assert.equal(error.code, "timeout");
    return true;
  });
  assert.equal(client._pending.size, 0);
  // A late reply is ignored.
  ws().push("items", { action: "retrieve", request_id: ws().last().request_id, status: 200, data: {} });
  client.close();
});

test("a collection holds the snapshot and applies events in order", async () => {
  const { client, ws } = setup();
  ws().open();
  const collection = await subscribed(client, ws, [{ pk: 1, data: ROW1 }], { filter: { status: "open" } });
  assert.ok(collection instanceof Collection);
  assert.deepEqual(ws().payloads("subscribe")[0].filter, { status: "open" });
  assert.deepEqual(collection.rows(), [{ pk: 1, data: ROW1 }]);
  assert.equal(collection.position, "10");
  const changes = [];
  collection.on("change", (change) => changes.push(change));
  const id = collection.id;
  ws().push("items", { action: "create", pk: 2, data: ROW2, position: "11", subscription: id });
  ws().push("items", { action: "update", pk: 1, data: { ...ROW1, value: 2 }, position: "12", subscription: id });
  ws().push("items", { action: "delete", pk: 2, data: ROW2, position: "13", subscription: id });
  ws().push("items", { action: "update", pk: 2, data: ROW2, position: "14", subscription: "other" });
  ws().push("items", { action: "update", pk: 2, data: ROW2, position: "15" }); // a group event
  assert.deepEqual(changes, [
    { action: "create", pk: 2, data: ROW2 },
    { action: "update", pk: 1, data: { ...ROW1, value: 2 } },
    { action: "delete", pk: 2, data: ROW2 },
  ]);
  assert.deepEqual([...collection.keys()], [1]);
  assert.equal(collection.get(1).value, 2);
  assert.equal(collection.size, 1);
  assert.equal(collection.position, "13");
  client.close();
});

test("applying an event twice is harmless", async () => {
  const { client, ws } = setup();
  ws().open();
  const collection = await subscribed(client, ws);
  const changes = [];
  collection.on("change", (change) => changes.push(change));
  const id = collection.id;
  const create = { action: "create", pk: 2, data: ROW2, position: "11", subscription: id };
  const remove = { action: "delete", pk: 1, position: "12", subscription: id }; // no data: replayed
  for (const event of [create, create, remove, remove]) ws().push("items", event);
  assert.deepEqual(collection.rows(), [{ pk: 2, data: ROW2 }]);
  assert.deepEqual(changes, [
    { action: "create", pk: 2, data: ROW2 },
    { action: "delete", pk: 1, data: ROW1 },
  ]);
  // An update of a row the collection does not hold is an upsert.
  ws().push("items", { action: "update", pk: 3, data: ROW1, position: "13", subscription: id });
  assert.deepEqual(collection.get(3), ROW1);
  client.close();
});

test("reload unsubscribes and subscribes again from scratch", async () => {
  const { client, ws } = setup();
  ws().open();
  const collection = await subscribed(client, ws, [{ pk: 1, data: ROW1 }, { pk: 2, data: ROW2 }], { pk: 1 });
  const resets = [];
  collection.on("reset", () => resets.push(collection.rows()));
  const old = collection.id;
  ws().push("items", { action: "reload", reason: "truncate", position: "20", subscription: old });
  const [unsubscribe, subscribe] = ws().payloads().slice(-2);
  assert.equal(unsubscribe.action, "unsubscribe");
  assert.equal(unsubscribe.subscription, old);
  assert.equal(subscribe.action, "subscribe");
  assert.equal(subscribe.pk, 1);
  assert.equal(subscribe.since, undefined);
  assert.notEqual(subscribe.request_id, old);
  // Events of the old subscription are ignored now.
  ws().push("items", { action: "create", pk: 5, data: ROW2, position: "21", subscription: old });
  ws().push("items", { action: "unsubscribe", request_id: unsubscribe.request_id, status: 200, data: { subscription: old } });
  ws().push("items", {
    action: "subscribe", request_id: subscribe.request_id, status: 200,
    data: { subscription: subscribe.request_id, results: [], position: "21", resync: false },
  });
  assert.deepEqual(resets, [[]]);
  assert.equal(collection.size, 0);
  assert.equal(collection.position, "21");
  client.close();
});

test("reconnects with backoff and resumes from the last position", async () => {
  const { client, ws } = setup({ minDelay: 10, maxDelay: 40 });
  ws().open();
  const collection = await subscribed(client, ws);
  ws().push("items", { action: "update", pk: 1, data: { ...ROW1, value: 2 }, position: "11", subscription: collection.id });
  const states = [];
  client.on("state", (state, info) => states.push([state, info.delay]));

  // Three failed attempts: the delays grow (each within [min * 2^n, min * 2^(n+1)], capped).
  const started = [];
  for (let attempt = 0; attempt < 4; attempt++) {
    const count = FakeWebSocket.instances.length;
    ws().drop();
    started.push(Date.now());
    await waitFor(() => FakeWebSocket.instances.length === count + 1);
  }
  const delays = states.filter(([s]) => s === "closed").map(([, d]) => d);
  assert.equal(delays.length, 4);
  delays.forEach((delay, n) => {
    assert.ok(delay >= Math.min(40, 10 * 2 ** n) && delay <= Math.min(40, 10 * 2 ** (n + 1)), `${n}: ${delay}`);
  });
  assert.equal(client.state, "connecting");
  assert.equal(collection.synced, false);

  ws().open();
  assert.equal(client.state, "open");
  const sub = ws().last();
  assert.equal(sub.action, "subscribe");
  assert.equal(sub.since, "11");
  // The missed changes are replayed with the new subscription id, then the reply.
  const changes = [];
  collection.on("change", (change) => changes.push(change));
  const resets = [];
  collection.on("reset", () => resets.push(1));
  ws().push("items", { action: "create", pk: 2, data: ROW2, position: "11", subscription: sub.request_id });
  ws().push("items", { action: "update", pk: 1, data: { ...ROW1, value: 3 }, position: "11", subscription: sub.request_id });
  ws().push("items", {
    action: "subscribe", request_id: sub.request_id, status: 200,
    data: { subscription: sub.request_id, replayed: 2, position: "14" },
  });
  assert.deepEqual(collection.rows(), [{ pk: 1, data: { ...ROW1, value: 3 } }, { pk: 2, data: ROW2 }]);
  assert.equal(changes.length, 2);
  assert.equal(resets.length, 0);
  assert.equal(collection.position, "14");
  assert.equal(collection.synced, true);

  // After a successful open, the backoff starts over.
  const count = FakeWebSocket.instances.length;
  ws().drop();
  assert.ok(states.at(-1)[1] <= 20);
  await waitFor(() => FakeWebSocket.instances.length === count + 1);
  client.close();
});

test("a resync reply replaces the rows and emits reset", async () => {
  const { client, ws } = setup();
  ws().open();
  const collection = await subscribed(client, ws, [{ pk: 1, data: ROW1 }, { pk: 2, data: ROW2 }]);
  const count = FakeWebSocket.instances.length;
  ws().drop();
  await waitFor(() => FakeWebSocket.instances.length === count + 1);
  ws().open();
  const sub = ws().last();
  assert.equal(sub.since, "10");
  const resets = [];
  collection.on("reset", (c) => resets.push(c.rows()));
  ws().push("items", {
    action: "subscribe", request_id: sub.request_id, status: 200,
    data: { subscription: sub.request_id, results: [{ pk: 3, data: ROW1 }], position: "99", resync: true },
  });
  assert.deepEqual(resets, [[{ pk: 3, data: ROW1 }]]);
  assert.deepEqual([...collection.keys()], [3]);
  assert.equal(collection.position, "99");
  client.close();
});

test("requests pending at a disconnect are rejected", async () => {
  const { client, ws } = setup();
  ws().open();
  const promise = client.stream("items").update(1, { value: 2 });
  ws().drop();
  await assert.rejects(promise, (error) => {
    assert.ok(error instanceof PgBindingError);
    assert.equal(error.status, 0);
    assert.equal(error.code, "disconnected");
    assert.equal(error.action, "update");
    return true;
  });
  assert.equal(client.state, "closed");
  // A request made while disconnected waits for the next socket.
  const later = client.stream("items").retrieve(1);
  await waitFor(() => FakeWebSocket.instances.length === 2);
  ws().open();
  const { request_id } = ws().last();
  ws().push("items", { action: "retrieve", request_id, status: 200, data: { pk: 1 } });
  assert.deepEqual(await later, { pk: 1 });
  // close() rejects what is left and stops reconnecting.
  const orphan = client.stream("items").retrieve(2);
  client.close();
  await assert.rejects(orphan, (error) => error.code === "closed");
  await sleep(30);
  assert.equal(FakeWebSocket.instances.length, 2);
  assert.equal(client.state, "closed");
});

test("closing a collection unsubscribes", async () => {
  const { client, ws } = setup();
  ws().open();
  const collection = await subscribed(client, ws);
  const id = collection.id;
  const done = collection.close();
  const unsubscribe = ws().last();
  assert.deepEqual(unsubscribe, { action: "unsubscribe", request_id: unsubscribe.request_id, subscription: id });
  ws().push("items", { action: "unsubscribe", request_id: unsubscribe.request_id, status: 200, data: { subscription: id } });
  await done;
  // Its events are ignored, and it is not resubscribed on reconnect.
  ws().push("items", { action: "create", pk: 2, data: ROW2, position: "11", subscription: id });
  assert.equal(collection.has(2), false);
  const count = FakeWebSocket.instances.length;
  ws().drop();
  await waitFor(() => FakeWebSocket.instances.length === count + 1);
  ws().open();
  assert.equal(ws().payloads("subscribe").length, 0);
  client.close();
});

test("a refused subscribe rejects ready and emits error", async () => {
  const { client, ws } = setup();
  ws().open();
  const collection = client.subscribe("items", { filter: { secret: "x" } });
  const errors = [];
  collection.on("error", (e) => errors.push(e));
  const sub = ws().last();
  ws().push("items", { action: "subscribe", request_id: sub.request_id, status: 400, errors: { secret: ["no"] } });
  await assert.rejects(collection.ready, (error) => error.status === 400);
  assert.equal(errors.length, 1);
  assert.equal(collection.closed, true);
  client.close();
});
