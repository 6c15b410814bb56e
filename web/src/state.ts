import { batch, computed, signal } from '@preact/signals';
import type { Guest, HostInfo, Operation, TrivisorEvent } from '../../src/api/types.ts';
import type { SessionBody } from '../../src/api/web-schemas.ts';
import { ApiError, createWebApi } from './api.ts';
import { navigate, route } from './router.ts';

/*
 * What the views show, as signals: the session, the project, and the live lists that the
 * event stream (`/1.0/events`) keeps current. Nothing here polls: a lifecycle event names the
 * guest that changed, and only that guest is read again.
 */

export const session = signal<SessionBody | null>(null);
export const host = signal<HostInfo | null>(null);
/** `connected`, `connecting` (first time), `reconnecting` (the stream dropped: the daemon restarts?). */
export const connection = signal<'connected' | 'connecting' | 'reconnecting'>('connecting');
export const guests = signal<Map<string, Guest>>(new Map());
export const guestsLoaded = signal(false);
export const operations = signal<Map<string, Operation>>(new Map());
/** The newest events, newest last (the guest page shows its own). */
export const recentEvents = signal<TrivisorEvent[]>([]);
/** Messages for the user: what failed, in one line each. */
export const notices = signal<Array<{ id: number; kind: 'error' | 'info'; text: string }>>([]);

export const project = computed(() => route.value.query.get('project') || 'default');

export const api = createWebApi({
  project: () => project.value,
  csrf: () => session.value?.csrfToken,
  onUnauthenticated: () => expired(),
});

let noticeId = 0;
export function notify(kind: 'error' | 'info', text: string): void {
  const id = ++noticeId;
  notices.value = [...notices.value.slice(-4), { id, kind, text }];
  setTimeout(() => dismiss(id), kind === 'error' ? 12_000 : 5000);
}
export function dismiss(id: number): void {
  notices.value = notices.value.filter((n) => n.id !== id);
}
/** Runs `work`; a failure becomes a notice (its one line), never an uncaught error. */
export async function attempt<T>(work: () => Promise<T>, done?: string): Promise<T | undefined> {
  try {
    const result = await work();
    if (done) notify('info', done);
    return result;
  } catch (e) {
    notify('error', e instanceof Error ? e.message : String(e));
    return undefined;
  }
}

/** The session ended (or never was): sign in, then come back to this very page. */
function expired(): void {
  if (route.value.path === '/login') return;
  const here = `${location.pathname}${location.search}`;
  stopEvents();
  session.value = null;
  navigate(`/login?next=${encodeURIComponent(here)}`);
}

/** After sign-in or reload: who we are, then the lists and the event stream. */
export async function start(): Promise<boolean> {
  try {
    session.value = await api.session();
  } catch (e) {
    if (e instanceof ApiError && (e.status === 401 || e.status === 404)) {
      expired();
      return false;
    }
    throw e;
  }
  await reload();
  startEvents();
  return true;
}

/** Reads the lists whole: at start, on a project change and after the stream reconnects. */
export async function reload(): Promise<void> {
  const [info, list, ops] = await Promise.all([
    api.serverInfo(),
    api.listGuests({ usage: false }),
    api.listOperations().catch(() => [] as Operation[]),
  ]);
  batch(() => {
    host.value = info;
    guests.value = new Map(list.map((g) => [g.name, g]));
    operations.value = new Map(ops.map((o) => [o.id, o]));
    guestsLoaded.value = true;
  });
}

let socket: WebSocket | null = null;
let stopped = true;
let retry: ReturnType<typeof setTimeout> | undefined;
let socketProject = '';

export function stopEvents(): void {
  stopped = true;
  if (retry) clearTimeout(retry);
  socket?.close();
  socket = null;
}

/** Opens the event stream; when it drops, says so and opens it again (every second), then re-reads what it missed. */
export function startEvents(): void {
  stopped = false;
  if (socket) return;
  const open = async (again: boolean) => {
    if (stopped) return;
    socketProject = project.value;
    let url: string;
    try {
      url = await api.websocketUrl('/1.0/events');
    } catch (e) {
      if (e instanceof ApiError && e.status === 401) return;
      connection.value = again ? 'reconnecting' : 'connecting';
      retry = setTimeout(() => open(again), 1000);
      return;
    }
    const ws = new WebSocket(url);
    socket = ws;
    ws.onopen = () => {
      connection.value = 'connected';
      // Whatever happened while the stream was down is read again, whole; at the first open too:
      // what changed between start()'s read of the lists and now reached no stream.
      reload().catch(() => {});
    };
    ws.onmessage = (m) => {
      try {
        onEvent(JSON.parse(String(m.data)) as TrivisorEvent);
      } catch {
        // a malformed event is skipped
      }
    };
    ws.onclose = () => {
      if (socket === ws) socket = null;
      if (stopped) return;
      connection.value = 'reconnecting';
      retry = setTimeout(() => open(true), 1000);
    };
  };
  open(false);
}

/** A different project: its lists and its own event stream. */
export function switchedProject(): void {
  if (socketProject === project.value || stopped) return;
  socket?.close();
  socket = null;
  guestsLoaded.value = false;
  reload().catch((e) => notify('error', String(e instanceof Error ? e.message : e)));
  startEvents();
}

const pending = new Set<string>();
let flush: ReturnType<typeof setTimeout> | undefined;

function onEvent(event: TrivisorEvent): void {
  recentEvents.value = [...recentEvents.value.slice(-499), event];
  if (event.type === 'operation') {
    const op = (event.metadata as { operation?: Operation }).operation;
    if (op) operations.value = new Map(operations.value).set(op.id, op);
    return;
  }
  if (event.type !== 'lifecycle') return;
  const source = event.source ?? '';
  const m = /^\/1\.0\/guests\/([^/]+)$/.exec(source);
  if (!m) return;
  const name = decodeURIComponent(m[1]!);
  if (event.action === 'guest-deleted') {
    const next = new Map(guests.value);
    next.delete(name);
    guests.value = next;
    return;
  }
  // The new status shows at once; the rest of the guest (pid, addresses…) follows its read.
  const status = (event.metadata as { status?: Guest['status'] }).status;
  const known = guests.value.get(name);
  if (known && status) guests.value = new Map(guests.value).set(name, { ...known, status });
  pending.add(name);
  if (flush === undefined) flush = setTimeout(readPending, 150);
}

async function readPending(): Promise<void> {
  flush = undefined;
  const names = [...pending];
  pending.clear();
  // Many at once (a bulk start): one list is cheaper than many reads.
  if (names.length > 20) {
    const list = await api.listGuests().catch(() => null);
    if (list) guests.value = new Map(list.map((g) => [g.name, g]));
    return;
  }
  const read = await Promise.all(names.map((n) => api.getGuest(n).catch(() => null)));
  const next = new Map(guests.value);
  names.forEach((n, i) => {
    const g = read[i];
    if (g) next.set(n, g);
  });
  guests.value = next;
}

/**
 * Reads a guest again after a change the event stream does not name it in (a NIC or a volume is
 * attached through the network's or the pool's route, whose events are theirs, not the guest's).
 */
export async function readGuest(name: string): Promise<void> {
  const g = await api.getGuest(name);
  guests.value = new Map(guests.value).set(name, g);
}

/** Waits for an operation through its wait route (long polls of 30 s), for actions the user started. */
export async function finished(op: Operation): Promise<Operation> {
  let current = op;
  while (current.status === 'Running' || current.status === 'Pending') {
    current = await api.waitOperation(current.id, 30);
    operations.value = new Map(operations.value).set(current.id, current);
  }
  if (current.status !== 'Success')
    throw new ApiError(current.error ?? `The operation ended ${current.status}`, 400);
  return current;
}
