// Type declarations of pgbinding.js, the JavaScript client of pgbinding's WebSocket protocol.

/** A row's primary key, as the server sends it. */
export type Pk = string | number;

/** `{field or "__all__": [messages]}`. */
export type Errors = Record<string, string[]>;

/** A filter: `{"field__operator": value}` conditions, all of which must hold. */
export type Filter = Record<string, unknown>;

export type ConnectionState = "connecting" | "open" | "closed";

/** A row as replies and snapshots carry it. */
export interface Row<T = Record<string, unknown>> {
  pk: Pk;
  data: T;
}

export interface ListQuery {
  filter?: Filter;
  ordering?: string | string[];
  page?: number;
  page_size?: number;
}

export interface ListResult<T = Record<string, unknown>> {
  results: Row<T>[];
  count: number;
  page: number;
  page_size: number;
}

export interface SubscribeOptions {
  /** The rows to watch. */
  filter?: Filter;
  /** Watch one row. */
  pk?: Pk;
}

/** An event of a subscription or a group, as the server sends it. */
export interface EventPayload<T = Record<string, unknown>> {
  action: "create" | "update" | "delete" | "reload";
  model: string;
  pk?: Pk;
  data?: T;
  reason?: "truncate";
  position: string;
  subscription?: string;
}

/** What a collection's "change" listeners get. For "delete", `data` is the row as it was. */
export interface Change<T = Record<string, unknown>> {
  action: "create" | "update" | "delete";
  pk: Pk;
  data: T;
}

export interface ClientOptions {
  /** The WebSocket constructor (default `globalThis.WebSocket`). */
  WebSocket?: new (url: string) => WebSocket;
  /** Milliseconds to wait for a reply before rejecting with code "timeout" (default 10000). */
  timeout?: number;
  /** The first reconnect delay, in ms (default 250); it doubles, with jitter, per attempt. */
  minDelay?: number;
  /** The longest reconnect delay, in ms (default 10000). */
  maxDelay?: number;
}

export interface StateInfo {
  /** With "closed": milliseconds until the next connection attempt. */
  delay?: number;
}

/** An error reply (status >= 400), or no reply at all (status 0: timeout, disconnect, close). */
export class PgBindingError extends Error {
  constructor(
    message: string,
    info?: {
      status?: number;
      errors?: Errors;
      action?: string | null;
      requestId?: string | number | null;
      stream?: string | null;
      code?: "timeout" | "disconnected" | "closed" | null;
    },
  );
  name: "PgBindingError";
  /** The reply's status; 0 when no reply came. */
  status: number;
  errors: Errors;
  action: string | null;
  requestId: string | number | null;
  stream: string | null;
  /** Why no reply came: "timeout", "disconnected" (the socket closed) or "closed" (client.close()); null for a reply. */
  code: "timeout" | "disconnected" | "closed" | null;
}

/** The messages of an `errors` object as one line: `"field: message; message"`. */
export function formatErrors(errors: Errors | null | undefined): string;

declare class Emitter<Events extends Record<string, (...args: any[]) => void>> {
  /** Adds a listener; returns a function that removes it. */
  on<K extends keyof Events & string>(name: K, fn: Events[K]): () => void;
  off<K extends keyof Events & string>(name: K, fn: Events[K]): void;
  emit<K extends keyof Events & string>(name: K, ...args: Parameters<Events[K]>): void;
}

export interface CollectionEvents<T> {
  change: (change: Change<T>) => void;
  reset: (collection: Collection<T>) => void;
  error: (error: PgBindingError) => void;
  [name: string]: (...args: any[]) => void;
}

/**
 * A live, read-only Map-like view of a subscription's rows (pk -> data), kept up to date
 * across reconnects.
 */
export class Collection<T = Record<string, unknown>> extends Emitter<CollectionEvents<T>> {
  private constructor();
  readonly stream: string;
  readonly filter: Filter | undefined;
  readonly pk: Pk | undefined;
  /** The current subscription id (a new one for every subscribe). */
  readonly id: string | null;
  /** The last position received: where a resume starts. */
  readonly position: string | null;
  /** True once the subscribe reply of the current socket arrived. */
  readonly synced: boolean;
  readonly closed: boolean;
  /** Resolves after the first snapshot; rejects if the subscription is refused. */
  readonly ready: Promise<Collection<T>>;
  readonly size: number;
  get(pk: Pk): T | undefined;
  has(pk: Pk): boolean;
  keys(): IterableIterator<Pk>;
  values(): IterableIterator<T>;
  entries(): IterableIterator<[Pk, T]>;
  forEach(fn: (data: T, pk: Pk, collection: Collection<T>) => void): void;
  [Symbol.iterator](): IterableIterator<[Pk, T]>;
  /** The rows as `[{pk, data}]`. */
  rows(): Row<T>[];
  /** Unsubscribes (if connected) and stops updating. */
  close(): Promise<void>;
}

/** The requests of one stream. Each resolves with the reply's `data`. */
export class Stream<T = Record<string, unknown>> {
  private constructor();
  readonly client: Client;
  readonly name: string;
  create(data: Partial<T>): Promise<Row<T>>;
  update(pk: Pk, data: Partial<T>): Promise<Row<T>>;
  delete(pk: Pk): Promise<{ pk: Pk }>;
  retrieve(pk: Pk): Promise<Row<T>>;
  list(query?: ListQuery): Promise<ListResult<T>>;
  subscribe(options?: SubscribeOptions): Collection<T>;
}

export interface ClientEvents {
  state: (state: ConnectionState, info: StateInfo) => void;
  /** A group event (one without a subscription). */
  event: (payload: EventPayload, stream: string) => void;
  /** An error reply that matches no pending request. */
  error: (error: PgBindingError) => void;
  [name: string]: (...args: any[]) => void;
}

/** One socket, reconnecting with backoff until `close()`. */
export class Client extends Emitter<ClientEvents> {
  constructor(url: string, options?: ClientOptions);
  readonly url: string;
  readonly state: ConnectionState;
  stream<T = Record<string, unknown>>(name: string): Stream<T>;
  subscribe<T = Record<string, unknown>>(stream: string, options?: SubscribeOptions): Collection<T>;
  /** Closes the socket for good; pending requests reject with code "closed". */
  close(): void;
}

/** Opens a client on a ws:// or wss:// URL. */
export function connect(url: string, options?: ClientOptions): Client;
