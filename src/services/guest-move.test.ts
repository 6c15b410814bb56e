import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { aGuestSpec, aGuestStatus } from '../../test/fakes/guest-records.ts';
import { haKeys } from '../control/ha/types.ts';
import { cancelled, conflict, invalidArgument, isTrivisorError, unavailable } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import type { GuestSpec, GuestStatus, Operation } from '../core/types.ts';
import type { GuestStorage } from '../drivers/guest-storage.ts';
import type { LiveMigration } from '../drivers/live-migration.ts';
import { type Logger, silentLogger } from '../host/logger.ts';
import { hostRunner, type ProcessRunner, type RunResult } from '../host/runner.ts';
import { ArchiveWriter } from '../storage/backup-archive.ts';
import type { BackupManifest, SnapshotRecord } from '../storage/storage-records.ts';
import type { TxnRequest } from '../store/kv.ts';
import type { KvEngine } from '../store/kv-engine.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { records, valuesOf } from '../store/records.ts';
import { createEventBus } from './event-bus.ts';
import {
  createGuestMover,
  createMoveReceiver,
  type GuestMover,
  type GuestMoverDeps,
  liveMoveRefusal,
  type MoveReceiver,
  type MoveTransport,
  type ResumingMover,
  type SweepingReceiver,
} from './guest-move.ts';
import { markMove, moveMarkOf } from './move-marks.ts';
import { createOperationService, isFinal } from './operation-service.ts';
import type { OperationService } from './types.ts';
import { convergedTo, waitForGuest } from './wait-guest.ts';

const spec = aGuestSpec;

/**
 * An HA guest `web` owned by h1 (decision 0052's records): a heartbeat key for each member (its
 * create revision is its fencing token) and the guest's HA record under h1's token.
 */
async function makeHa(store: KvEngine, members: string[] = ['h1', 'h2']) {
  const tokens: Record<string, number> = {};
  for (const m of members) {
    await store.put(haKeys.heartbeat(m), JSON.stringify({ member: m }));
    tokens[m] = (await store.get(haKeys.heartbeat(m)))?.createRevision ?? 0;
  }
  const record = { name: 'web', owner: 'h1', token: tokens.h1, decidedAt: 1, failures: 0, failedOn: [] };
  await store.put(haKeys.guest('web'), JSON.stringify(record));
  return { tokens, record };
}
/** Waits for `cond`, failing after 10 s (a test that waits never hangs). */
async function waitUntil(cond: () => boolean): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!cond()) {
    if (Date.now() > deadline) throw new Error('waited 10 s in vain');
    await new Promise((r) => setTimeout(r, 2));
  }
}
/** Waits for `cond`, failing after 10 s. */
async function waitUntilAsync(cond: () => Promise<boolean>): Promise<void> {
  const deadline = Date.now() + 10_000;
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error('waited 10 s in vain');
    await new Promise((r) => setTimeout(r, 5));
  }
}
/**
 * `store` as a daemon whose store does not answer the undoing of a move (an etcd that did not
 * answer in time): every transaction that writes guest `web`'s journal as `rolled-back` fails,
 * while `refusing.on` holds.
 */
function refusingUndo(store: KvEngine, refusing: { on: boolean }): KvEngine {
  return new Proxy(store, {
    get(t, p, receiver) {
      const v = Reflect.get(t, p, receiver) as unknown;
      if (p === 'txn') {
        return async (request: TxnRequest) => {
          const undoes = request.success.some(
            (op) =>
              op.type === 'put' &&
              op.key === keys.guestMove('web') &&
              JSON.parse(op.value).phase === 'rolled-back',
          );
          if (refusing.on && undoes) throw unavailable('The store did not answer in time');
          return t.txn(request);
        };
      }
      return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
    },
  });
}
/** A logger that keeps the messages of its errors (what a test waits for), and drops the rest. */
function recordingLogger(): { log: Logger; errors: string[] } {
  const errors: string[] = [];
  const log: Logger = {
    debug: () => {},
    info: () => {},
    warn: () => {},
    error: (_fields, message) => errors.push(message ?? ''),
    child: () => log,
  };
  return { log, errors };
}
const haRecordOf = async (store: KvEngine) => {
  const kv = await store.get(haKeys.guest('web'));
  return kv && { ...JSON.parse(kv.value), modRevision: kv.modRevision };
};

/**
 * Every member's guest controller, reduced to what a move relies on: the owner of a spec (its
 * location key) makes the guest's files when the status says none are made, and writes a status
 * that answers the spec's generation, Running or Stopped as desired.
 */
function fakeControllers(store: KvEngine, files: Map<string, Set<string>>, frozen = new Set<string>()) {
  const watcher = store.watch(records.guest.prefix, { prefix: true, onLost: () => {} }, (events) => {
    for (const e of events) if (e.type === 'put') void converge(records.guest.decode(e.kv));
  });
  async function converge(s: GuestSpec): Promise<void> {
    const owner = (await records.guestLocation.at(s.name).get(store))?.value;
    const before = await records.guestStatus.at(s.name).get(store);
    // A member whose daemon is held (SIGSTOP) or dead does nothing.
    if (owner !== s.location || frozen.has(owner)) return;
    if (!before?.value.provisioned) files.get(owner)?.add(s.name);
    const status: GuestStatus = {
      status: s.desired === 'Running' ? 'Running' : 'Stopped',
      observedGeneration: s.generation,
      observedRestartRequest: 0,
      restartCount: 0,
      provisioned: true,
      appliedConfig: {},
      pendingRestart: [],
    };
    await records.guestStatus.at(s.name).put(store, status);
  }
  return { stop: () => watcher.cancel() };
}

/** A step a cold move's daemon dies at (kill -9), in the fakes below. */
type DeathAt =
  | 'stopping'
  | 'archiving'
  | 'archived'
  | 'handing-over'
  | 'handed-over'
  | 'sending'
  | 'sent'
  | 'starting'
  | 'dropping';

/**
 * A daemon that can die: what it reaches through `wrap` (its store, its services, the member API)
 * stops answering once `kill()` ran, as for a process killed -9: every call from then on, and
 * every call that was waiting, hangs, and its watches go quiet. The world (the store, the other
 * member) goes on.
 */
function mortal() {
  let dead = false;
  const never = new Promise<never>(() => {});
  function wrap<T extends object>(target: T, diesAfter?: (method: string, args: unknown[]) => boolean): T {
    return new Proxy(target, {
      get(t, p, receiver) {
        const v = Reflect.get(t, p, receiver) as unknown;
        if (typeof v !== 'function') return v;
        const f = v as (...a: unknown[]) => unknown;
        if (p === 'watch') {
          return (key: unknown, options: unknown, onEvents: (...a: unknown[]) => void) =>
            f.call(t, key, options, (...a: unknown[]) => {
              if (!dead) onEvents(...a);
            });
        }
        return async (...args: unknown[]) => {
          if (dead) return never;
          const r = await f.apply(t, args);
          if (dead) return never;
          if (diesAfter?.(String(p), args)) {
            dead = true;
            return never;
          }
          return r;
        };
      },
    });
  }
  return {
    wrap,
    kill: () => {
      dead = true;
    },
    get dead() {
      return dead;
    },
    never,
  };
}

describe('moving a guest (cold)', () => {
  let store: KvEngine;
  let operations: OperationService;
  let files: Map<string, Set<string>>;
  let controllers: { stop(): void };
  let dir: string;
  let sent: Array<[string, string]>;
  let discarded: Array<[string, string]>;
  /** The archives the move asked for (`named`), how many were written, and which were deleted. */
  let backups: { named: string[]; made: number; deleted: string[] };
  let sendFails: Error | undefined;
  let backupFails: Error | undefined;
  /** What the destination's discard fails with (it cannot be reached, say). */
  let discardFails: Error | undefined;
  let mover: GuestMover;
  let members: Array<{ name: string; status: string }>;
  /** An HA guest's move mark as each stop or start of the move saw it. */
  let haSeen: unknown[];
  /** The daemon that runs `mover`, and the step it dies at (none: it lives). */
  let life: ReturnType<typeof mortal>;
  let dieAt: DeathAt | undefined;
  /** The mover's dependencies as the daemon started again has them (its own daemon alive). */
  let depsAgain: GuestMoverDeps;
  /** Guests the destination holds half a copy of (its receive cut short). */
  let halfCopies: Set<string>;
  /** Members whose controller does nothing (held or dead), and what happens while the archive is written. */
  let frozen: Set<string>;
  let whileArchiving: (() => void) | undefined;
  /** How many times the mover read the member list. */
  let membersRead = 0;
  const dies = (at: DeathAt) => {
    if (dieAt !== at) return false;
    life.kill();
    return true;
  };

  const end = async (op: Operation) => operations.wait(op.id);
  const guest = async () => (await records.guest.at('web').get(store))?.value;
  const status = async () => (await records.guestStatus.at('web').get(store))?.value;

  beforeEach(async () => {
    store = createMemoryStore();
    operations = createOperationService(createEventBus());
    files = new Map([
      ['h1', new Set(['web'])],
      ['h2', new Set()],
    ]);
    frozen = new Set();
    whileArchiving = undefined;
    controllers = fakeControllers(store, files, frozen);
    dir = await mkdtemp(join(tmpdir(), 'trivisor-move-'));
    sent = [];
    discarded = [];
    backups = { named: [], made: 0, deleted: [] };
    sendFails = undefined;
    backupFails = undefined;
    discardFails = undefined;
    haSeen = [];
    life = mortal();
    dieAt = undefined;
    halfCopies = new Set();
    members = [
      { name: 'h1', status: 'Online' },
      { name: 'h2', status: 'Online' },
      { name: 'h3', status: 'Offline' },
    ];
    await records.guestLocation.at('web').put(store, 'h1');
    await records.guest.at('web').put(store, spec());
    await waitForGuest(store, 'web', convergedTo(1));
    const snapshot: SnapshotRecord = {
      name: 's1',
      guest: 'web',
      createdAt: new Date(0).toISOString(),
      wasRunning: false,
      location: 'h1',
    };
    await records.snapshot.at('web', 's1').put(store, snapshot);
    const transport: MoveTransport = {
      async send(member, name, archivePath) {
        if (dies('handed-over')) return life.never;
        sent.push([member, name]);
        if (sendFails) throw sendFails;
        if (dies('sending')) {
          halfCopies.add(name);
          return life.never;
        }
        // The destination writes the snapshots' records as its own.
        await records.snapshot.at(name, 's1').put(store, { ...snapshot, location: member });
        await rm(archivePath, { force: true });
        // Applied there; the daemon that sent it dies before it reads the answer.
        if (dies('sent')) return life.never;
      },
      async discard(member, name) {
        discarded.push([member, name]);
        if (discardFails) throw discardFails;
        files.get(member)?.delete(name);
        halfCopies.delete(name);
      },
      prepareLive: () => Promise.reject(new Error('not a live move')),
      finishLive: () => Promise.reject(new Error('not a live move')),
    };
    depsAgain = {
      store,
      operations,
      hostName: 'h1',
      log: silentLogger(),
      members: async () => {
        membersRead++;
        return members;
      },
      memberWatch: { everyMs: 10, goneAfterMs: 300 },
      transport,
      liveRefusal: async (s) => `Live migration of ${s.model} guests needs CRIU, which fails here: test`,
      removeLocal: async (s) => {
        if (dies('dropping')) return;
        files.get(s.location)?.delete(s.name);
      },
      guests: {
        async changeState(name, request) {
          const now = await records.guest.at(name).get(store);
          assert.ok(now);
          const generation = now.value.generation + 1;
          const desired = request.action === 'start' ? 'Running' : 'Stopped';
          const ha = await store.get(haKeys.guest(name));
          if (ha) haSeen.push(`${request.action} ${JSON.stringify(JSON.parse(ha.value).moving)}`);
          await records.guest.at(name).put(store, { ...now.value, desired, generation });
          if (request.action === 'stop' && dies('stopping')) return life.never;
          return operations.start({
            project: 'default',
            description: `${request.action} ${name}`,
            resources: {},
            run: async () => {
              await waitForGuest(store, name, convergedTo(generation));
              return undefined;
            },
          });
        },
      },
      storage: {
        async createBackup(_guest, options) {
          assert.match(options.name ?? '', /^backup-[0-9a-f]{16}$/, 'the mover names its archive');
          const name = options.name ?? '';
          backups.named.push(name);
          return operations.start({
            project: 'default',
            description: 'backup',
            resources: {},
            run: async () => {
              if (backupFails) throw backupFails;
              whileArchiving?.();
              if (dies('archiving')) return life.never;
              backups.made++;
              await writeFile(join(dir, `${name}.tar`), 'archive');
              // Written; the daemon dies before the operation's answer reaches the mover.
              if (dies('archived')) return life.never;
              return { backup: name };
            },
          });
        },
        async backupFile(_guest, backup) {
          return { path: join(dir, `${backup}.tar`), sizeBytes: 7 };
        },
        async deleteBackup(_guest, backup) {
          backups.deleted.push(backup);
          await rm(join(dir, `${backup}.tar`), { force: true });
        },
      },
    };
    // The daemon that runs the move: its store, services and member API die with it; right
    // after its transaction that hands the guest over (`handing-over`), or that starts it on the
    // destination (`starting`).
    const writesSpec = (args: unknown[], desired: GuestSpec['desired']) =>
      (args[0] as TxnRequest).success.some(
        (op) =>
          op.type === 'put' &&
          op.key === records.guest.key('web') &&
          JSON.parse(op.value).location === 'h2' &&
          JSON.parse(op.value).desired === desired,
      );
    mover = createGuestMover({
      ...depsAgain,
      store: life.wrap(
        store,
        (method, args) =>
          method === 'txn' &&
          ((writesSpec(args, 'Running') && dies('starting')) ||
            (writesSpec(args, 'Stopped') && dies('handing-over'))),
      ),
      operations: life.wrap(operations),
      transport: life.wrap(transport),
      guests: life.wrap(depsAgain.guests),
      storage: life.wrap(depsAgain.storage),
      removeLocal: life.wrap({ removeLocal: depsAgain.removeLocal }).removeLocal,
    });
  });

  afterEach(async () => {
    // As in the live moves' afterEach: no move goes on into the next test with its closures.
    const waiting = operations.list().filter((o) => !isFinal(o) && o.mayCancel);
    for (const o of waiting) operations.cancel(o.id);
    await Promise.all(waiting.map((o) => operations.wait(o.id, 2000)));
    controllers.stop();
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('a running guest stops, hands over its files and records, runs on the destination, and only then leaves the source', async () => {
    const op = await end(await mover.move('web', { target: 'h2' }));
    assert.equal(op.status, 'Success', op.error ?? '');
    // The archive's bytes and the send's time: what the rebalancer learns the link's bandwidth from.
    const { copiedBytes, copyMs, ...rest } = op.metadata as { copiedBytes: number; copyMs: number };
    assert.deepEqual(rest, { location: 'h2' });
    assert.ok(copiedBytes > 0 && copyMs >= 0, JSON.stringify(op.metadata));
    const moved = await guest();
    assert.equal(moved?.location, 'h2');
    assert.equal(moved?.desired, 'Running');
    assert.equal((await records.guestLocation.at('web').get(store))?.value, 'h2');
    assert.equal((await status())?.status, 'Running');
    assert.deepEqual(sent, [['h2', 'web']]);
    assert.deepEqual([...(files.get('h1') ?? [])], [], "the source's files are removed");
    assert.deepEqual([...(files.get('h2') ?? [])], ['web']);
    assert.deepEqual(backups.deleted, backups.named);
    assert.equal((await records.snapshot.at('web', 's1').get(store))?.value.location, 'h2');
    assert.deepEqual(discarded, []);
  });

  test('an HA guest: its record says it moves before it stops, is unmarked before it starts again where it was, names the destination from the hand-over on, and goes back with the records when the move is undone', async () => {
    const { tokens } = await makeHa(store);
    // The guest ran: the mark says so, for HA to start it again if the source is lost (decision 0108).
    const mark = JSON.stringify({ to: 'h2', token: tokens.h2, reason: 'evacuation', wasRunning: true });
    const running = () =>
      waitForGuest(store, 'web', (sp, st) =>
        st?.status === 'Running' && st.observedGeneration === sp?.generation ? true : undefined,
      );
    backupFails = new Error('No space left on device');
    assert.equal(
      (await end(await mover.move('web', { target: 'h2', reason: 'evacuation' }))).status,
      'Failure',
    );
    // HA starts an HA guest only once its record no longer says it moves.
    assert.deepEqual(haSeen, [`stop ${mark}`, 'start undefined']);
    await running();

    backupFails = undefined;
    sendFails = invalidArgument(
      'The backup archive is corrupted: rootfs.tar.zst does not match its checksum',
    );
    haSeen = [];
    assert.equal(
      (await end(await mover.move('web', { target: 'h2', reason: 'evacuation' }))).status,
      'Failure',
    );
    assert.deepEqual(haSeen, [`stop ${mark}`]);
    const back = await haRecordOf(store);
    assert.deepEqual([back.owner, back.token, back.moving], ['h1', tokens.h1, undefined]);
    assert.equal((await guest())?.location, 'h1');
    await running();

    sendFails = undefined;
    const ok = await end(await mover.move('web', { target: 'h2' }));
    assert.equal(ok.status, 'Success', ok.error ?? '');
    const moved = await haRecordOf(store);
    assert.deepEqual([moved.owner, moved.token, moved.moving], ['h2', tokens.h2, undefined]);
  });

  test('an HA guest that HA is restarting elsewhere, or whose source lost its HA lease, or that moves already, is refused in one line and nothing changes', async () => {
    const { tokens, record } = await makeHa(store);
    const refusal = async () => {
      const before = await guest();
      try {
        await mover.move('web', { target: 'h2' });
      } catch (e) {
        assert.ok(isTrivisorError(e));
        assert.deepEqual(await guest(), before);
        return `${e.code}: ${e.message}`;
      }
      assert.fail('moved');
    };
    await store.put(haKeys.guest('web'), JSON.stringify({ ...record, owner: 'h3' }));
    assert.equal(
      await refusal(),
      'Conflict: HA gave guest web to member h3: it is being restarted there; move it from there once it runs',
    );
    await store.put(haKeys.guest('web'), JSON.stringify({ ...record, token: (tokens.h1 ?? 0) - 1 }));
    assert.match(
      await refusal(),
      /^Conflict: Member h1 does not hold the HA lease guest web was given under/,
    );
    await store.put(
      haKeys.guest('web'),
      JSON.stringify({ ...record, moving: { to: 'h2', token: tokens.h2, reason: 'migration' } }),
    );
    assert.equal(await refusal(), 'Conflict: Guest web is being moved to h2 already');
    await store.put(haKeys.guest('web'), JSON.stringify(record));
    await store.delete(haKeys.heartbeat('h2'));
    assert.equal(
      await refusal(),
      'FailedPrecondition: Member h2 has no HA agent running (no HA heartbeat): HA guest web cannot move there',
    );
    assert.deepEqual(sent, []);
    assert.equal((await haRecordOf(store))?.moving, undefined);
  });

  test('every move is marked while it runs (no HA key, no second move meanwhile) and unmarked when it ends; a refused move leaves no mark', async () => {
    await assert.rejects(mover.move('web', { target: 'h3' }));
    assert.equal(await moveMarkOf(store, 'web'), undefined);
    const op = await mover.move('web', { target: 'h2', reason: 'rebalancing' });
    const mark = await moveMarkOf(store, 'web');
    assert.deepEqual(mark && [mark.from, mark.to, mark.reason], ['h1', 'h2', 'rebalancing']);
    await assert.rejects(mover.move('web', { target: 'h2' }), { code: 'Conflict' });
    assert.equal((await end(op)).status, 'Success');
    await waitUntilAsync(async () => (await moveMarkOf(store, 'web')) === undefined);
  });

  test('a guest another mover marked (a move that runs) is refused in one line and nothing changes', async () => {
    const release = await markMove(
      store,
      { guest: 'web', from: 'h1', to: 'h3', reason: 'evacuation', startedAt: new Date(0).toISOString() },
      [],
    );
    try {
      await assert.rejects(mover.move('web', { target: 'h2' }), {
        code: 'Conflict',
        message: 'Guest web is being moved to h3 already',
      });
      assert.equal((await guest())?.location, 'h1');
      assert.equal((await status())?.status, 'Running');
      assert.equal(backups.made, 0);
    } finally {
      await release();
    }
  });

  test('a stopped guest moves stopped', async () => {
    const now = await records.guest.at('web').get(store);
    assert.ok(now);
    await records.guest.at('web').put(store, { ...now.value, desired: 'Stopped', generation: 2 });
    await waitForGuest(store, 'web', convergedTo(2));
    const op = await end(await mover.move('web', { target: 'h2' }));
    assert.equal(op.status, 'Success', op.error ?? '');
    assert.equal((await guest())?.location, 'h2');
    assert.equal((await guest())?.desired, 'Stopped');
    assert.equal((await status())?.status, 'Stopped');
    assert.deepEqual([...(files.get('h2') ?? [])], ['web']);
    assert.deepEqual([...(files.get('h1') ?? [])], []);
  });

  /**
   * A move of the running guest `web` that failed after its hand-over and was undone: `op` ended
   * with `code` and `error`; the records, the snapshots and the running guest are the source's
   * again (at a later generation than `before`), its files untouched, the destination asked to
   * discard its copy, the archive gone.
   */
  const assertUndone = async (op: Operation, code: string, error: string, before: GuestSpec | undefined) => {
    assert.equal(op.status, 'Failure');
    assert.equal(op.metadata.errorCode, code);
    assert.equal(op.error, error);
    const back = await guest();
    assert.equal(back?.location, 'h1');
    assert.equal(back?.desired, 'Running');
    assert.ok((back?.generation ?? 0) > (before?.generation ?? 0));
    assert.equal((await records.guestLocation.at('web').get(store))?.value, 'h1');
    await waitForGuest(store, 'web', convergedTo(back?.generation ?? 0));
    assert.equal((await status())?.status, 'Running');
    assert.deepEqual(discarded, [['h2', 'web']], 'its copy there is asked to go (answered or not)');
    assert.deepEqual([...(files.get('h1') ?? [])], ['web'], "the source's files are untouched");
    assert.equal((await records.snapshot.at('web', 's1').get(store))?.value.location, 'h1');
    assert.deepEqual(backups.deleted, backups.named);
  };

  test('a destination that refuses the archive: the records, the snapshots and the running guest are back on the source, the copy there removed, the error said with its code', async () => {
    sendFails = invalidArgument(
      'The backup archive is corrupted: rootfs.tar.zst does not match its checksum',
    );
    const before = await guest();
    const op = await end(await mover.move('web', { target: 'h2' }));
    await assertUndone(
      op,
      'InvalidArgument',
      'Cannot move guest web to h2: The backup archive is corrupted: rootfs.tar.zst does not match its checksum; it stays on h1',
      before,
    );
    assert.deepEqual([...(files.get('h2') ?? [])], [], 'no half-copy on the destination');
    assert.equal(backups.named.length, 1);
  });

  const WENT_OFFLINE =
    'Cannot move guest web to h2: h2 went Offline while the guest was being moved to it; it stays on h1';

  test("a destination that dies while it makes the guest's files (held, then Offline): the move is undone once it is seen Offline, not at the 5-minute timeout; the guest runs on the source, the error names the member", {
    timeout: 20_000,
  }, async () => {
    frozen.add('h2');
    const before = await guest();
    const asked = await mover.move('web', { target: 'h2' });
    await waitUntilAsync(async () => (await guest())?.location === 'h2');
    members = members.map((m) => (m.name === 'h2' ? { ...m, status: 'Offline' } : m));
    await assertUndone(await end(asked), 'Unavailable', WENT_OFFLINE, before);
    assert.deepEqual(sent, [], 'nothing was sent to it');
  });

  test("a destination that dies after it made the guest's files, and cannot be told to discard them when the move is undone: the discard is left for it in the store; a refusal because the guest is its own leaves none", {
    timeout: 20_000,
  }, async () => {
    frozen.add('h2');
    discardFails = unavailable('Cannot reach member h2');
    const before = await guest();
    const asked = await mover.move('web', { target: 'h2' });
    await waitUntilAsync(async () => (await guest())?.location === 'h2');
    members = members.map((m) => (m.name === 'h2' ? { ...m, status: 'Offline' } : m));
    await assertUndone(await end(asked), 'Unavailable', WENT_OFFLINE, before);
    assert.ok(await store.get(keys.moveDiscard('h2', 'web')), 'left for h2');
    await store.delete(keys.moveDiscard('h2', 'web'));
    members = members.map((m) => (m.name === 'h2' ? { ...m, status: 'Online' } : m));
    discarded.length = 0;
    discardFails = conflict("Guest web is this member's: its files are not removed");
    const again = await guest();
    const second = await mover.move('web', { target: 'h2' });
    await waitUntilAsync(async () => (await guest())?.location === 'h2');
    members = members.map((m) => (m.name === 'h2' ? { ...m, status: 'Offline' } : m));
    await assertUndone(await end(second), 'Unavailable', WENT_OFFLINE, again);
    assert.equal(await store.get(keys.moveDiscard('h2', 'web')), undefined);
  });

  test('a destination gone while the archive is written: the hand-over is made (the member list may lag), then undone once the destination has been seen gone for the grace; the guest runs again on the source', async () => {
    whileArchiving = () => {
      frozen.add('h2');
      members = members.map((m) => (m.name === 'h2' ? { ...m, status: 'Offline' } : m));
    };
    const before = await guest();
    await assertUndone(
      await end(await mover.move('web', { target: 'h2' })),
      'Unavailable',
      WENT_OFFLINE,
      before,
    );
    assert.deepEqual(sent, []);
  });

  test('a destination Offline for less than the grace, back before it ran out: the move goes on and ends there', async () => {
    frozen.add('h2');
    const asked = await mover.move('web', { target: 'h2' });
    await waitUntilAsync(async () => (await guest())?.location === 'h2');
    members = members.map((m) => (m.name === 'h2' ? { ...m, status: 'Offline' } : m));
    // Seen Offline twice by the mover's watch, then back: well within the grace.
    const read = membersRead;
    await waitUntil(() => membersRead >= read + 2);
    members = members.map((m) => (m.name === 'h2' ? { ...m, status: 'Online' } : m));
    frozen.delete('h2');
    // The held controller takes the spec up again (as a daemon resumed from SIGSTOP would).
    const now = await guest();
    assert.ok(now);
    await records.guest.at('web').put(store, now);
    const op = await end(asked);
    assert.equal(op.status, 'Success', op.error ?? '');
    assert.equal((await guest())?.location, 'h2');
    assert.deepEqual(sent, [['h2', 'web']]);
  });

  // Decision 0079: the daemon running a cold move is killed at each step; started again, it finds
  // the move's journal (its mark) and finishes or undoes it, whichever keeps the guest's data.
  const deaths: Array<[DeathAt, string, 'started' | 'handed-over' | 'sent', 'h1' | 'h2']> = [
    ['stopping', 'while the guest stops', 'started', 'h1'],
    ['archiving', 'while it writes the archive', 'started', 'h1'],
    ['archived', 'once the archive is written, before it heard so', 'started', 'h1'],
    ['handed-over', 'after the hand-over, before it sends the archive', 'handed-over', 'h1'],
    ['sending', 'while it sends the archive (half of it applied there)', 'handed-over', 'h1'],
    ['sent', 'once the destination applied the archive, before it heard so', 'handed-over', 'h1'],
    ['starting', 'while the destination starts the guest', 'sent', 'h2'],
    ['dropping', "before it removed the source's files", 'sent', 'h2'],
  ];
  for (const [at, when, phase, ends] of deaths) {
    const outcome =
      ends === 'h1'
        ? 'undoes the move: the guest runs on the source with its files and snapshots, and nothing of it is left on the destination'
        : "finishes the move: the guest runs on the destination, and the source's files go";
    test(`a daemon killed ${when}, started again, ${outcome}`, async () => {
      // A user's own backup of the guest, which no move may remove.
      await writeFile(join(dir, 'backup-00000000000000aa.tar'), "the user's");
      dieAt = at;
      await mover.move('web', { target: 'h2' });
      await waitUntil(() => life.dead);
      const journal = await moveMarkOf(store, 'web');
      assert.equal(journal?.phase, phase, 'the journal says how far it got');
      assert.equal(journal?.wasRunning, true);
      dieAt = undefined;
      const again = createGuestMover(depsAgain);
      assert.equal(await again.resumeUnfinished(), 1);
      const other = ends === 'h1' ? 'h2' : 'h1';
      assert.equal((await guest())?.location, ends);
      assert.equal((await records.guestLocation.at('web').get(store))?.value, ends);
      await waitForGuest(store, 'web', (sp, st) =>
        st?.status === 'Running' && st.observedGeneration === sp?.generation ? true : undefined,
      );
      assert.deepEqual([...(files.get(ends) ?? [])], ['web']);
      assert.deepEqual([...(files.get(other) ?? [])], [], `nothing of it is left on ${other}`);
      assert.deepEqual([...halfCopies], []);
      assert.deepEqual(discarded, phase === 'handed-over' ? [['h2', 'web']] : []);
      assert.equal((await records.snapshot.at('web', 's1').get(store))?.value.location, ends);
      assert.equal(await moveMarkOf(store, 'web'), undefined, 'the journal is gone');
      assert.deepEqual([...new Set(backups.deleted)], backups.named, 'the archive the move named is removed');
      assert.deepEqual(
        await readdir(dir),
        ['backup-00000000000000aa.tar'],
        "no archive is left but the user's",
      );
      assert.equal(await again.resumeUnfinished(), 0, 'nothing is left to resume');
    });
  }

  test('a move that fails after its hand-over and cannot be undone (the store did not answer) keeps its journal; the living daemon undoes it on its next try, on its timer', async () => {
    const refusing = { on: true };
    const { log, errors } = recordingLogger();
    const living = createGuestMover({ ...depsAgain, log, store: refusingUndo(store, refusing) });
    sendFails = invalidArgument('The archive is damaged');
    const op = await end(await living.move('web', { target: 'h2' }));
    assert.equal(op.status, 'Failure');
    assert.equal(
      op.error,
      'Cannot move guest web to h2: The archive is damaged; it could not be undone either (its records name h2): it is finished or undone from its journal by h1 within minutes',
    );
    // Its operation has ended, and what it left is settled: the journal was kept, not removed.
    await waitUntil(() => errors.some((m) => m.includes('its journal is kept')));
    assert.equal((await moveMarkOf(store, 'web'))?.phase, 'handed-over', 'the journal is kept');
    assert.equal((await guest())?.location, 'h2');
    assert.deepEqual([...(files.get('h1') ?? [])], ['web'], "the source's copy is kept");
    sendFails = undefined;
    refusing.on = false;
    const timer = living.retryUnfinished(5);
    try {
      await waitUntilAsync(async () => (await moveMarkOf(store, 'web')) === undefined);
    } finally {
      timer.stop();
    }
    assert.equal((await guest())?.location, 'h1');
    await waitForGuest(store, 'web', (sp, st) =>
      st?.status === 'Running' && st.observedGeneration === sp?.generation ? true : undefined,
    );
    assert.deepEqual([...(files.get('h2') ?? [])], []);
    assert.deepEqual([...(files.get('h1') ?? [])], ['web']);
  });

  test("a guest on a shared pool whose daemon died right after its hand-over: started again, it finishes the move (the destination has the same files): the guest runs there and this member's link goes", async () => {
    await records.pool.at('nfs').put(store, {
      name: 'nfs',
      driver: 'dir',
      description: '',
      config: { source: '/srv/nfs' },
      createdAt: new Date(0).toISOString(),
      everyMember: true,
      shared: true,
      marker: 'm',
    });
    await records.guestPool
      .at('web')
      .put(store, { pool: 'nfs', path: '/srv/nfs/guests/web', limitBytes: null });
    dieAt = 'handing-over';
    await mover.move('web', { target: 'h2' });
    await waitUntil(() => life.dead);
    const journal = await moveMarkOf(store, 'web');
    assert.deepEqual([journal?.kind, journal?.phase], ['shared', 'handed-over']);
    dieAt = undefined;
    assert.equal(await createGuestMover(depsAgain).resumeUnfinished(), 1);
    assert.equal((await guest())?.location, 'h2');
    await waitForGuest(store, 'web', (sp, st) =>
      st?.status === 'Running' && st.observedGeneration === sp?.generation ? true : undefined,
    );
    assert.deepEqual([...(files.get('h1') ?? [])], [], "this member's link is dropped");
    assert.deepEqual(discarded, []);
    assert.equal(await moveMarkOf(store, 'web'), undefined);
  });

  test("a guest changed on the destination before its archive arrived (its source's daemon dead): neither copy nor the archive is dropped, and the journal goes", async () => {
    dieAt = 'handed-over';
    await mover.move('web', { target: 'h2' });
    await waitUntil(() => life.dead);
    const now = await records.guest.at('web').get(store);
    assert.ok(now);
    await records.guest
      .at('web')
      .put(store, { ...now.value, desired: 'Running', generation: now.value.generation + 1 });
    dieAt = undefined;
    assert.equal(await createGuestMover(depsAgain).resumeUnfinished(), 1);
    assert.equal((await guest())?.location, 'h2');
    assert.deepEqual([...(files.get('h1') ?? [])], ['web']);
    assert.deepEqual([...(files.get('h2') ?? [])], ['web']);
    assert.deepEqual(backups.deleted, []);
    assert.deepEqual(discarded, []);
    assert.equal(await moveMarkOf(store, 'web'), undefined);
  });

  // Decision 0089: the source restarted past the hand-over has a new HA token (its agent's lease
  // was renewed); its journal's ticket names the old one.
  const renewHeartbeat = async (member: string) => {
    await store.delete(haKeys.heartbeat(member));
    await store.put(haKeys.heartbeat(member), JSON.stringify({ member }));
    return (await store.get(haKeys.heartbeat(member)))?.createRevision;
  };

  test("an HA guest whose source restarted past the hand-over (a new HA token), started again, undoes the move: the HA record goes back under the source's new token, the guest runs there, the journal goes", async () => {
    const { tokens } = await makeHa(store);
    dieAt = 'handed-over';
    await mover.move('web', { target: 'h2' });
    await waitUntil(() => life.dead);
    const journal = await moveMarkOf(store, 'web');
    assert.equal(journal?.phase, 'handed-over');
    assert.equal(journal?.ha?.fromToken, tokens.h1);
    const handed = await haRecordOf(store);
    assert.deepEqual([handed.owner, handed.token], ['h2', tokens.h2]);
    const h1Now = await renewHeartbeat('h1');
    assert.notEqual(h1Now, tokens.h1);
    dieAt = undefined;
    const again = createGuestMover(depsAgain);
    assert.equal(await again.resumeUnfinished(), 1);
    const back = await haRecordOf(store);
    assert.deepEqual([back.owner, back.token, back.moving], ['h1', h1Now, undefined]);
    assert.equal((await guest())?.location, 'h1');
    await waitForGuest(store, 'web', (sp, st) =>
      st?.status === 'Running' && st.observedGeneration === sp?.generation ? true : undefined,
    );
    assert.deepEqual([...(files.get('h1') ?? [])], ['web']);
    assert.deepEqual([...(files.get('h2') ?? [])], []);
    assert.equal(await moveMarkOf(store, 'web'), undefined, 'the journal is gone');
    assert.equal(await again.resumeUnfinished(), 0, 'nothing is left to resume');
  });

  test('an HA guest whose source restarted past the hand-over while its destination is gone too: the destination was never asked to run it, so the source takes it back without waiting for HA', async () => {
    await makeHa(store);
    dieAt = 'handed-over';
    await mover.move('web', { target: 'h2' });
    await waitUntil(() => life.dead);
    const h1Now = await renewHeartbeat('h1');
    await store.delete(haKeys.heartbeat('h2'));
    dieAt = undefined;
    assert.equal(await createGuestMover(depsAgain).resumeUnfinished(), 1);
    const back = await haRecordOf(store);
    assert.deepEqual([back.owner, back.token], ['h1', h1Now]);
    assert.equal((await guest())?.location, 'h1');
    assert.equal(await moveMarkOf(store, 'web'), undefined);
  });

  test("an HA guest that HA gave again since its hand-over (its record names a new lease of the destination's) is left to HA by the restarted source: both copies and the archive are kept, the journal goes, and nothing is retried", async () => {
    const { record } = await makeHa(store);
    dieAt = 'handed-over';
    await mover.move('web', { target: 'h2' });
    await waitUntil(() => life.dead);
    await renewHeartbeat('h1');
    const h2Now = await renewHeartbeat('h2');
    await store.put(haKeys.guest('web'), JSON.stringify({ ...record, owner: 'h2', token: h2Now }));
    dieAt = undefined;
    const { log, errors } = recordingLogger();
    // The release of a shared pool's link, asked again once the mark that kept it is gone.
    const released: Array<[string, string | undefined]> = [];
    const again = createGuestMover({
      ...depsAgain,
      log,
      releaseShared: async (guest) => {
        released.push([guest, (await moveMarkOf(store, guest))?.to]);
      },
    });
    assert.equal(await again.resumeUnfinished(), 1);
    assert.ok(
      errors.some((m) => m.includes('HA decided about the guest since its hand-over')),
      errors.join('; '),
    );
    assert.deepEqual(released, [['web', undefined]], 'released once its mark is gone');
    assert.equal((await guest())?.location, 'h2');
    assert.deepEqual((await haRecordOf(store)).token, h2Now);
    assert.deepEqual([...(files.get('h1') ?? [])], ['web'], "this member's copy is kept");
    assert.deepEqual(backups.deleted, [], 'the archive is kept');
    assert.equal(await moveMarkOf(store, 'web'), undefined);
    assert.equal(await again.resumeUnfinished(), 0);
  });

  // Decision 0089, amended: the source restarted before the hand-over (phase `started`) has a new
  // HA token too; its journal's ticket names the old one.
  const runsOnH1 = () =>
    waitForGuest(store, 'web', (sp, st) =>
      sp?.location === 'h1' && st?.status === 'Running' && st.observedGeneration === sp.generation
        ? true
        : undefined,
    );

  test("an HA guest whose source restarted before the hand-over (a new HA token), started again, undoes the move: its HA record is the source's under the new token, no longer moving, the guest runs there, the journal goes", async () => {
    const { tokens } = await makeHa(store);
    dieAt = 'archiving';
    await mover.move('web', { target: 'h2' });
    await waitUntil(() => life.dead);
    assert.equal((await moveMarkOf(store, 'web'))?.phase, 'started');
    assert.deepEqual((await haRecordOf(store)).moving?.to, 'h2');
    const h1Now = await renewHeartbeat('h1');
    assert.notEqual(h1Now, tokens.h1);
    dieAt = undefined;
    const again = createGuestMover(depsAgain);
    assert.equal(await again.resumeUnfinished(), 1);
    const back = await haRecordOf(store);
    assert.deepEqual([back.owner, back.token, back.moving], ['h1', h1Now, undefined]);
    await runsOnH1();
    const resumed = operations.list().find((o) => o.description.startsWith('Finishing the move'));
    assert.deepEqual(
      [resumed?.status, resumed?.metadata.outcome],
      ['Success', 'undone: the guest stays here'],
    );
    assert.deepEqual([...(files.get('h2') ?? [])], []);
    assert.equal(await moveMarkOf(store, 'web'), undefined, 'the journal is gone');
    assert.equal(await again.resumeUnfinished(), 0, 'nothing is left to resume');
  });

  test("an HA guest whose source's agent takes its new lease only after the daemon started again: the resume waits for it, then ends the mark under it", async () => {
    await makeHa(store);
    dieAt = 'stopping';
    await mover.move('web', { target: 'h2' });
    await waitUntil(() => life.dead);
    // The old lease expired; the agent holds none yet.
    await store.delete(haKeys.heartbeat('h1'));
    let agentToken: number | undefined;
    setTimeout(() => {
      void renewHeartbeat('h1').then((t) => {
        agentToken = t;
      });
    }, 200);
    dieAt = undefined;
    const again = createGuestMover({ ...depsAgain, haToken: () => agentToken, haLeaseWaitMs: 10_000 });
    assert.equal(await again.resumeUnfinished(), 1);
    const back = await haRecordOf(store);
    assert.ok(agentToken !== undefined);
    assert.deepEqual([back.owner, back.token, back.moving], ['h1', agentToken, undefined]);
    await runsOnH1();
    assert.equal(await moveMarkOf(store, 'web'), undefined);
  });

  test("an HA guest whose source's agent holds no live lease within the wait (its old lease expired, no new one yet): the resume fails saying why, the guest stays stopped and marked, the journal stays; the next try, once the agent holds a lease, undoes it", async () => {
    const { tokens } = await makeHa(store);
    dieAt = 'archiving';
    await mover.move('web', { target: 'h2' });
    await waitUntil(() => life.dead);
    await store.delete(haKeys.heartbeat('h1'));
    dieAt = undefined;
    const waiting = createGuestMover({ ...depsAgain, haToken: () => undefined, haLeaseWaitMs: 50 });
    assert.equal(await waiting.resumeUnfinished(), 1);
    const failed = operations.list().find((o) => o.description.startsWith('Finishing the move'));
    assert.equal(failed?.status, 'Failure');
    assert.equal(
      failed?.error,
      "Guest web's move to h2 could not be undone yet: Member h1's HA agent holds no live lease now (it takes one within seconds): guest web's move to h2 cannot be ended yet; it is tried again within minutes, and at the daemon's next start",
    );
    assert.equal((await haRecordOf(store)).moving?.to, 'h2', 'the mark stays');
    assert.equal((await guest())?.desired, 'Stopped', 'not started while HA may give it away');
    assert.equal((await moveMarkOf(store, 'web'))?.phase, 'started', 'the journal stays');
    const h1Now = await renewHeartbeat('h1');
    assert.notEqual(h1Now, tokens.h1);
    // The failed try's wait is in the journal: a daemon started again before it ends waits too.
    assert.equal(await createGuestMover({ ...depsAgain, haToken: () => h1Now }).resumeUnfinished(), 0);
    const later = () => Date.now() + 61_000;
    const again = createGuestMover({ ...depsAgain, haToken: () => h1Now, now: later });
    assert.equal(await again.resumeUnfinished(), 1);
    const back = await haRecordOf(store);
    assert.deepEqual([back.owner, back.token, back.moving], ['h1', h1Now, undefined]);
    await runsOnH1();
    assert.equal(await moveMarkOf(store, 'web'), undefined);
  });

  test("an HA guest whose source's agent says nothing live within the wait while the store still holds the lease the move began under (a slow agent): only the mark goes, the record keeping that token, and the guest is wanted running", async () => {
    const { tokens } = await makeHa(store);
    dieAt = 'archiving';
    await mover.move('web', { target: 'h2' });
    await waitUntil(() => life.dead);
    dieAt = undefined;
    const again = createGuestMover({ ...depsAgain, haToken: () => undefined, haLeaseWaitMs: 50 });
    assert.equal(await again.resumeUnfinished(), 1);
    const back = await haRecordOf(store);
    assert.deepEqual([back.owner, back.token, back.moving], ['h1', tokens.h1, undefined]);
    await runsOnH1();
    assert.equal(await moveMarkOf(store, 'web'), undefined);
  });

  test("a failed resume's wait is kept in the journal: a daemon started again (a crash loop) waits for it, the next failure doubles it up to 30 min, and a success ends it with the journal", async () => {
    await makeHa(store);
    dieAt = 'archiving';
    await mover.move('web', { target: 'h2' });
    await waitUntil(() => life.dead);
    await store.delete(haKeys.heartbeat('h1'));
    dieAt = undefined;
    let clock = Date.parse('2026-12-06T12:00:00Z');
    /** A daemon started again: nothing in its memory, the journal in the store; no HA lease yet. */
    const restarted = (token?: number) =>
      createGuestMover({ ...depsAgain, haToken: () => token, haLeaseWaitMs: 20, now: () => clock });
    const retry = async () => ((await moveMarkOf(store, 'web')) as { retry?: unknown } | undefined)?.retry;
    const failures = () =>
      operations
        .list()
        .filter((o) => o.description.startsWith('Finishing the move') && o.status === 'Failure').length;
    assert.equal(await restarted().resumeUnfinished(), 1);
    assert.deepEqual(await retry(), { at: new Date(clock + 60_000).toISOString(), delayMs: 60_000 });
    // Restarted at once, and again 59 s later: not tried.
    assert.equal(await restarted().resumeUnfinished(), 0);
    clock += 59_000;
    assert.equal(await restarted().resumeUnfinished(), 0);
    assert.equal(failures(), 1);
    // Due: tried, failed again, the wait doubled.
    clock += 1_000;
    assert.equal(await restarted().resumeUnfinished(), 1);
    assert.deepEqual(await retry(), { at: new Date(clock + 120_000).toISOString(), delayMs: 120_000 });
    // Up to 30 min at most.
    for (const wait of [240_000, 480_000, 960_000, 1_800_000, 1_800_000]) {
      clock = Date.parse(((await retry()) as { at: string }).at);
      assert.equal(await restarted().resumeUnfinished(), 1);
      assert.equal(((await retry()) as { delayMs: number }).delayMs, wait);
    }
    assert.equal(failures(), 7);
    // A clock set back an hour since (the journal's next try further off than its wait): due now.
    clock = Date.parse(((await retry()) as { at: string }).at) - 3_600_000;
    assert.equal(await restarted().resumeUnfinished(), 1);
    assert.equal(failures(), 8);
    assert.deepEqual(await retry(), { at: new Date(clock + 1_800_000).toISOString(), delayMs: 1_800_000 });
    // The agent holds a lease: the next try, once due, undoes the move and the journal goes.
    const h1Now = await renewHeartbeat('h1');
    assert.equal(await restarted(h1Now).resumeUnfinished(), 0, 'not due yet');
    clock = Date.parse(((await retry()) as { at: string }).at);
    assert.equal(await restarted(h1Now).resumeUnfinished(), 1);
    await runsOnH1();
    assert.equal(await moveMarkOf(store, 'web'), undefined);
  });

  test("a move given up before its hand-over while this member's HA agent holds no live lease keeps its journal: the guest stays stopped here with its HA record marked, and the living daemon's next try ends the mark under the agent's new lease and starts the guest", async () => {
    const { tokens } = await makeHa(store);
    let agentToken: number | undefined;
    const { log, errors } = recordingLogger();
    const living = createGuestMover({ ...depsAgain, log, haToken: () => agentToken, haLeaseWaitMs: 50 });
    // The agent's lease expired during the move; it holds no new one yet.
    backupFails = new Error('No space left on device');
    const started = await living.move('web', { target: 'h2' });
    await store.delete(haKeys.heartbeat('h1'));
    const op = await end(started);
    assert.equal(op.status, 'Failure');
    assert.equal(
      op.error,
      "Cannot move guest web to h2: No space left on device; it stays on h1, but its HA record still says it moves (this member's HA agent holds no live lease): h1 ends that from the move's journal within minutes, and only then starts the guest again",
    );
    await waitUntil(() => errors.some((m) => m.includes('HA mark could not be ended: its journal is kept')));
    const kept = await moveMarkOf(store, 'web');
    assert.deepEqual([kept?.phase, kept?.wasRunning, kept?.ha?.toToken], ['started', true, tokens.h2]);
    assert.equal((await haRecordOf(store)).moving?.to, 'h2', 'the HA mark stays');
    assert.equal((await guest())?.desired, 'Stopped', 'not started while HA may give it away');
    assert.equal((await guest())?.location, 'h1');
    // No lease yet: the next try fails and keeps the journal.
    await waitUntilAsync(async () => (await living.resumeUnfinished()) === 1);
    assert.equal((await moveMarkOf(store, 'web'))?.phase, 'started');
    // The agent takes a new lease; the try after the wait ends the mark and starts the guest.
    agentToken = await renewHeartbeat('h1');
    const afterWait = createGuestMover({
      ...depsAgain,
      haToken: () => agentToken,
      now: () => Date.now() + 61_000,
    });
    assert.equal(await afterWait.resumeUnfinished(), 1);
    const back = await haRecordOf(store);
    assert.deepEqual([back.owner, back.token, back.moving], ['h1', agentToken, undefined]);
    await runsOnH1();
    assert.equal(await moveMarkOf(store, 'web'), undefined);
    assert.deepEqual(sent, []);
  });

  test("a mark that is no move's journal (an HA restart's binding, which its CRM makes and removes) is not resumed, nor removed, by the member it names as its source", async () => {
    const binding = {
      guest: 'web',
      from: 'h1',
      to: 'h2',
      reason: 'HA restart: h1 was lost',
      startedAt: new Date().toISOString(),
      kind: 'ha',
    };
    await store.put(keys.guestMove('web'), JSON.stringify(binding));
    assert.equal(await createGuestMover(depsAgain).resumeUnfinished(), 0);
    assert.deepEqual(await moveMarkOf(store, 'web'), binding);
    assert.deepEqual(operations.list(), []);
  });

  test("another member's unfinished move is not this member's to resume, and a second move of its guest is refused while it is unfinished", async () => {
    dieAt = 'handed-over';
    await mover.move('web', { target: 'h2' });
    await waitUntil(() => life.dead);
    dieAt = undefined;
    assert.equal(await createGuestMover({ ...depsAgain, hostName: 'h2' }).resumeUnfinished(), 0);
    await assert.rejects(createGuestMover({ ...depsAgain, hostName: 'h2' }).move('web', { target: 'h1' }), {
      code: 'Conflict',
      message: 'Guest web is being moved to h2 already',
    });
    assert.equal((await moveMarkOf(store, 'web'))?.phase, 'handed-over');
  });

  test('a failure before the hand-over (the archive cannot be written) starts the guest again where it is; nothing moved', async () => {
    backupFails = new Error('No space left on device');
    const op = await end(await mover.move('web', { target: 'h2' }));
    assert.equal(op.status, 'Failure');
    assert.match(op.error ?? '', /^Cannot move guest web to h2: .*No space left on device; it stays on h1$/);
    assert.equal((await guest())?.location, 'h1');
    await waitForGuest(store, 'web', (s, st) =>
      st?.status === 'Running' && st.observedGeneration === s?.generation ? true : undefined,
    );
    assert.deepEqual(sent, []);
    assert.deepEqual(discarded, []);
  });

  test("a guest that a port forward of its member's address points at is refused in one line (409) naming the forward, nothing changes, and pinned() says why; a forward of another member's address does not hold it", async () => {
    const now = await records.guest.at('web').get(store);
    assert.ok(now);
    await records.guest.at('web').put(store, {
      ...now.value,
      devices: { eth0: { type: 'nic', network: 'lab', 'ipv4.address': '198.18.50.20' } },
    });
    await waitForGuest(store, 'web', convergedTo(now.value.generation));
    for (const [name, ip] of [
      ['h1', '198.18.0.11'],
      ['h2', '198.18.0.12'],
    ] as const) {
      await records.member.at(name).put(store, {
        name,
        address: `${ip}:8443`,
        roles: [],
        certificateFingerprint: 'ff',
        version: 'test',
        joinedAt: new Date(0).toISOString(),
        evacuated: false,
      });
    }
    const forward = (listenAddress: string) => ({
      listenAddress,
      listenPort: 8080,
      protocol: 'tcp' as const,
      targetAddress: '198.18.50.20',
      targetPort: 80,
      targetGuest: 'web',
    });
    const lab = {
      name: 'lab',
      description: '',
      config: { 'ipv4.address': '198.18.50.1/24' },
      generation: 1,
      deleting: false,
      location: 'h1',
      createdAt: new Date(0).toISOString(),
      forwards: [forward('198.18.0.11')],
    };
    await records.network.at('lab').put(store, lab);
    const before = await records.guest.at('web').get(store);
    await assert.rejects(mover.move('web', { target: 'h2' }), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'Conflict');
      assert.equal(
        e.message,
        "Guest web cannot move to h2: port forward lab 198.18.0.11:8080/tcp → 198.18.50.20:80 listens on member h1's address and would no longer reach it; remove it (trivisor network forward remove lab 198.18.0.11:8080), move the guest, and forward an address of h2 instead",
      );
      return true;
    });
    assert.equal(
      (await records.guest.at('web').get(store))?.modRevision,
      before?.modRevision,
      'spec untouched',
    );
    assert.deepEqual(sent, []);
    assert.equal(backups.made, 0);
    const spec = (await guest()) as GuestSpec;
    assert.equal(
      await mover.pinned(spec),
      "web is pinned to h1 by port forward lab 198.18.0.11:8080/tcp → 198.18.50.20:80 (a forward reaches only the guests of its listen address's member)",
    );
    // A forward left on h2's address (made before forwards were checked) reaches nothing now: it holds nothing.
    await records.network.at('lab').put(store, { ...lab, forwards: [forward('198.18.0.12')] });
    assert.equal(await mover.pinned(spec), undefined);
    await end(await mover.move('web', { target: 'h2' }));
    assert.equal((await guest())?.location, 'h2');
  });

  test('refusals are one line, with their code, and change nothing', async () => {
    const before = await records.guest.at('web').get(store);
    const refused = async (target: string, more: { live?: boolean } = {}) => {
      try {
        await mover.move('web', { target, ...more });
      } catch (e) {
        assert.ok(isTrivisorError(e));
        assert.doesNotMatch(e.message, /\n/);
        return `${e.code}: ${e.message}`;
      }
      assert.fail(`moved to ${target}`);
    };
    assert.equal(await refused('nope'), 'NotFound: Member nope not found; see trivisor cluster list');
    assert.equal(await refused('h3'), 'FailedPrecondition: Cannot move guest web to h3: h3 is Offline');
    assert.equal(await refused('h1'), 'InvalidArgument: Guest web is on member h1 already');
    assert.match(await refused('Bad_Name'), /^InvalidArgument: .*member name/);
    assert.equal(
      await refused('h2', { live: true }),
      'NotSupported: Live migration of ct guests needs CRIU, which fails here: test',
    );
    const now = await records.guest.at('web').get(store);
    assert.ok(now);
    await records.guest.at('web').put(store, {
      ...now.value,
      disks: { data: { type: 'disk', pool: 'default', source: 'vol1', path: '/data' } },
    });
    await waitForGuest(store, 'web', convergedTo(now.value.generation));
    assert.equal(
      await refused('h2'),
      'FailedPrecondition: Guest web has volumes attached (default/vol1): volumes do not move with their guest yet; detach them first',
    );
    assert.ok(before);
    assert.equal((await guest())?.location, 'h1');
    assert.deepEqual(sent, []);
    assert.equal(backups.made, 0);
  });
});

describe('receiving a moved guest', () => {
  let store: KvEngine;
  let dir: string;
  let imported: Array<{ snapshot?: string; bytes: string }>;
  let removed: string[];
  let receiver: MoveReceiver;

  /** A backup archive as an export writes it: payloads, then the manifest with their checksums. */
  async function archive(
    payloads: Record<string, string>,
    guest = { name: 'web', model: 'ct' },
  ): Promise<string> {
    const path = join(dir, `a-${Math.random().toString(16).slice(2)}.tar`);
    const writer = await ArchiveWriter.create(path);
    const files: BackupManifest['files'] = {};
    const snapshots: SnapshotRecord[] = [];
    for (const [rel, text] of Object.entries(payloads)) {
      if (rel.startsWith('snapshots/')) {
        if (snapshots.length === 0) await writer.addDirectory('snapshots');
        snapshots.push({
          name: rel.slice(10, -8),
          guest: 'web',
          createdAt: new Date(0).toISOString(),
          wasRunning: false,
          location: 'h1',
        });
      }
      files[rel] = await writer.addStream(
        rel,
        (async function* () {
          yield Buffer.from(text);
        })(),
      );
    }
    const manifest: BackupManifest = {
      format: 'trivisor-backup/1',
      createdAt: new Date(0).toISOString(),
      guest: { ...guest, config: {}, createdAt: new Date(0).toISOString() },
      image: { fingerprint: 'ab'.repeat(32), alias: 'busybox', description: '' },
      snapshots,
      files,
    };
    await writer.addBuffer('manifest.json', Buffer.from(JSON.stringify(manifest)));
    await writer.finish();
    return path;
  }

  const status = (more: Partial<GuestStatus> = {}) =>
    aGuestStatus({ status: 'Stopped', observedGeneration: 2, ...more });

  beforeEach(async () => {
    store = createMemoryStore();
    dir = await mkdtemp(join(tmpdir(), 'trivisor-receive-'));
    imported = [];
    removed = [];
    await records.guest.at('web').put(store, spec({ location: 'h2', desired: 'Stopped', generation: 2 }));
    await records.guestStatus.at('web').put(store, status());
    const storage = {
      async importTar(_spec: GuestSpec, path: string, options?: { snapshot?: string }) {
        imported.push({
          ...(options?.snapshot && { snapshot: options.snapshot }),
          bytes: await readFile(path, 'utf8'),
        });
      },
    } as unknown as GuestStorage;
    receiver = createMoveReceiver({
      store,
      hostName: 'h2',
      storage: { ct: storage },
      runner: hostRunner(),
      workDir: dir,
      removeLocal: async (s) => {
        removed.push(`${s.location}/${s.name}`);
      },
    });
  });

  afterEach(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
  });

  test("applies the root file system and each snapshot through the guest's storage, records the snapshots as this member's, and removes the archive", async () => {
    const path = await archive({ 'rootfs.tar.zst': 'root', 'snapshots/s1.tar.zst': 'snap' });
    await receiver.receive('web', path, new AbortController().signal);
    assert.deepEqual(imported, [{ bytes: 'root' }, { snapshot: 's1', bytes: 'snap' }]);
    assert.equal((await records.snapshot.at('web', 's1').get(store))?.value.location, 'h2');
    await assert.rejects(stat(path), { code: 'ENOENT' });
  });

  test('refuses, in one line and applying nothing, a guest not moved here, one not made yet or running, and an archive of another guest', async () => {
    const refusal = async (expected: RegExp) => {
      const path = await archive({ 'rootfs.tar.zst': 'root' });
      await assert.rejects(receiver.receive('web', path, new AbortController().signal), expected);
      await assert.rejects(stat(path), { code: 'ENOENT' }, 'the archive is removed');
    };
    await records.guestStatus.at('web').put(store, status({ status: 'Running' }));
    await refusal(
      /^TrivisorError\(Conflict\): Guest web is not ready here for its files \(Running\)$|Guest web is not ready here/,
    );
    await records.guestStatus.at('web').put(store, status({ provisioned: false }));
    await refusal(
      /Guest web is not ready here for its files \(not made yet\)|Guest web is not ready here for its files \(Stopped\)/,
    );
    await records.guestStatus.at('web').put(store, status());
    const other = await archive({ 'rootfs.tar.zst': 'root' }, { name: 'db', model: 'ct' });
    await assert.rejects(receiver.receive('web', other, new AbortController().signal), {
      code: 'InvalidArgument',
      message: 'The archive is of ct guest db, not of guest web',
    });
    await records.guest.at('web').put(store, spec({ location: 'h1' }));
    await refusal(/Guest web is not being moved to h2/);
    assert.deepEqual(imported, []);
  });

  test("discard removes the copy of a guest that is another member's, never of one that is this member's", async () => {
    await assert.rejects(receiver.discard('web'), { code: 'Conflict' });
    await records.guest.at('web').put(store, spec({ location: 'h1' }));
    await receiver.discard('web');
    assert.deepEqual(removed, ['h2/web']);
  });

  /**
   * A vm's live migration as the destination's side uses it, faked: `calls` gets what it was
   * asked (prepare as `prepare` says, finish and drop by name); the source's side is not here.
   */
  function incomingFake(
    calls: string[],
    prepare: LiveMigration['prepareIncoming'],
    more: Partial<LiveMigration> = {},
  ): LiveMigration {
    const mover = () => Promise.reject(new Error('the source side is the mover'));
    return {
      prepareIncoming: prepare,
      async finishIncoming(s) {
        calls.push(`finish ${s.name}`);
      },
      async dropIncoming(s) {
        calls.push(`drop ${s.name}`);
      },
      migrateOut: mover,
      resumeSource: mover,
      recoverSource: mover,
      releaseSource: mover,
      ...more,
    };
  }
  /** What a prepare answers: the endpoints on `host`. */
  const preparedOn = (host: string) => ({
    process: { pid: 1, startTime: 2 },
    endpoints: { host, nbdPort: 3, migrationPort: 4 },
    tls: { caCert: 'CA', cert: 'CERT', key: 'KEY' },
  });
  /** Journals a live move of `web` from h1 to this member (h2), as its source does; answers its release. */
  const journalLive = (phase: 'started' | 'rolled-back') =>
    markMove(
      store,
      {
        guest: 'web',
        from: 'h1',
        to: 'h2',
        reason: 'test',
        startedAt: new Date(0).toISOString(),
        kind: 'live',
        phase,
      },
      [],
    );
  /** A receiver on h2 (198.18.0.12) with vm guests moving live to it through `migration`. */
  const liveReceiver = (
    migration: LiveMigration,
    more: { storage?: Partial<Record<'vm', GuestStorage>>; hasCopy?: () => Promise<boolean> } = {},
  ) =>
    createMoveReceiver({
      store,
      hostName: 'h2',
      storage: more.storage ?? {},
      runner: hostRunner(),
      workDir: dir,
      removeLocal: async (s) => {
        removed.push(`${s.location}/${s.name}`);
      },
      live: {
        migrationOf: (model) => (model === 'vm' ? migration : undefined),
        image: async () => ({}) as never,
        host: '198.18.0.12',
        addressOf: async (member) => (member === 'h1' ? '198.18.0.11' : undefined),
        ...(more.hasCopy && { hasCopy: more.hasCopy }),
      },
    });

  test("a live move is prepared only for a guest another member holds, from that member's address; it runs here only once the records name this member; a discard drops its filter first", async () => {
    const calls: string[] = [];
    const migration = incomingFake(calls, async (s, _image, options) => {
      calls.push(`prepare ${s.name} on ${s.location} at ${options.host} from ${options.from}`);
      return preparedOn(options.host);
    });
    const live = liveReceiver(migration);
    // The guest is this member's (the fixture's location h2): nothing to migrate here.
    await assert.rejects(live.prepareLive('web'), { code: 'Conflict' });
    await records.guest.at('web').put(store, spec({ location: 'h1' }));
    await assert.rejects(live.prepareLive('web'), { code: 'NotSupported' }, 'a ct guest');
    await records.guest.at('web').put(store, spec({ location: 'h1', model: 'vm' }));
    const prepared = await live.prepareLive('web');
    assert.deepEqual(prepared.endpoints, { host: '198.18.0.12', nbdPort: 3, migrationPort: 4 });
    await assert.rejects(live.finishLive('web'), { code: 'FailedPrecondition' }, 'not handed over yet');
    await live.discard('web');
    await records.guest.at('web').put(store, spec({ location: 'h2', model: 'vm' }));
    await live.finishLive('web');
    assert.deepEqual(calls, ['prepare web on h2 at 198.18.0.12 from 198.18.0.11', 'drop web', 'finish web']);
    assert.deepEqual(removed, ['h2/web']);
  });

  test("a copy a move undone left here while this member did not answer (the key the source left for it) is discarded by the sweep, unless a move of it to this member runs again; a guest that is this member's now only loses the key", async () => {
    const calls: string[] = [];
    const live = liveReceiver(
      incomingFake(calls, async () => {
        throw new Error('no prepare here');
      }),
    );
    const leave = () => store.put(keys.moveDiscard('h2', 'web'), new Date(0).toISOString());
    const left = async () => (await store.get(keys.moveDiscard('h2', 'web'))) !== undefined;
    // Another member's discard is not this one's.
    await store.put(keys.moveDiscard('h3', 'web'), new Date(0).toISOString());
    await records.guest.at('web').put(store, spec({ location: 'h1', model: 'vm' }));
    await records.guestLocation.at('web').put(store, 'h1');
    await leave();
    const unjournal = await journalLive('started');
    assert.deepEqual((await live.sweep()).removed, []);
    assert.equal(await left(), true, 'a move to here runs again: kept');
    await unjournal();
    assert.deepEqual(
      (await live.sweep()).removed.map((r) => r.name),
      ['web'],
    );
    assert.deepEqual([calls, removed, await left()], [['drop web'], ['h2/web'], false]);
    assert.ok(await store.get(keys.moveDiscard('h3', 'web')));
    // The guest is this member's now: the key goes, nothing is discarded.
    await leave();
    await records.guestLocation.at('web').put(store, 'h2');
    assert.deepEqual((await live.sweep()).removed, []);
    assert.deepEqual([calls, removed, await left()], [['drop web'], ['h2/web'], false]);
  });

  test("a live move's copy is marked from its prepare until it runs here or goes; the sweep discards one left when no move of it to this member is journaled and the records name another member, never a copy that was here before", async () => {
    const calls: string[] = [];
    let hasCopy = false;
    let failPrepare: Error | undefined;
    const migration = incomingFake(calls, async (s, _image, options) => {
      calls.push(`prepare ${s.name}`);
      if (failPrepare) throw failPrepare;
      return preparedOn(options.host);
    });
    const live = liveReceiver(migration, { hasCopy: async () => hasCopy });
    const marked = async () => (await readdir(dir)).filter((f) => f.startsWith('move-incoming-'));
    await records.guest.at('web').put(store, spec({ location: 'h1', model: 'vm' }));
    await records.guestLocation.at('web').put(store, 'h1');

    // Prepared, then run here: marked, then not.
    await live.prepareLive('web');
    assert.deepEqual(await marked(), ['move-incoming-web']);
    await records.guest.at('web').put(store, spec({ location: 'h2', model: 'vm' }));
    await records.guestLocation.at('web').put(store, 'h2');
    await live.finishLive('web');
    assert.deepEqual(await marked(), []);
    await records.guest.at('web').put(store, spec({ location: 'h1', model: 'vm' }));
    await records.guestLocation.at('web').put(store, 'h1');

    // A prepare that fails undid what it made: no mark. A copy that was here before: never marked.
    failPrepare = new Error('QEMU would not start');
    await assert.rejects(live.prepareLive('web'), /QEMU would not start/);
    assert.deepEqual(await marked(), []);
    hasCopy = true;
    failPrepare = conflict('This member already has files of guest web');
    await assert.rejects(live.prepareLive('web'), { code: 'Conflict' });
    assert.deepEqual(await marked(), []);
    assert.deepEqual((await live.sweep()).removed, []);
    hasCopy = false;
    failPrepare = undefined;

    // Prepared while its move is journaled: the sweep keeps it, whatever the phase.
    const unjournal = await journalLive('started');
    await live.prepareLive('web');
    calls.length = 0;
    assert.deepEqual((await live.sweep()).removed, []);
    await unjournal();
    const undoing = await journalLive('rolled-back');
    assert.deepEqual((await live.sweep()).removed, []);
    assert.deepEqual(calls, []);
    assert.deepEqual(removed, []);
    await undoing();
    // The source gave up and could not discard (this daemon was dead): the sweep does.
    const swept = await live.sweep();
    assert.deepEqual(
      swept.removed.map((r) => r.name),
      ['move-incoming-web'],
    );
    assert.deepEqual(calls, ['drop web']);
    assert.deepEqual(removed, ['h2/web']);
    assert.deepEqual(await marked(), []);

    // One whose switch-over happened (the guest is this member's now) only loses its mark.
    await live.prepareLive('web');
    await records.guestLocation.at('web').put(store, 'h2');
    calls.length = 0;
    assert.match((await live.sweep()).removed[0]?.why ?? '', /is h2's now/);
    assert.deepEqual([calls, await marked()], [[], []]);
  });

  test("a live move's snapshots, sent ahead in an archive of their own, are checked, kept, and written into the new disk by the prepare before its engine starts, then removed; a prepare whose guest has snapshots that were not sent is refused", async () => {
    const calls: string[] = [];
    const migration = incomingFake(
      calls,
      async (s, _image, options) => {
        calls.push(`create ${s.name} on ${s.location}`);
        await options.fill?.();
        calls.push(`start QEMU after ${imported.length} snapshot(s)`);
        return preparedOn(options.host);
      },
      { finishIncoming: () => Promise.reject(new Error('not here')) },
    );
    const storage = {
      async importTar(s: GuestSpec, path: string, options?: { snapshot?: string }) {
        imported.push({
          ...(options?.snapshot && { snapshot: `${options.snapshot} on ${s.location}` }),
          bytes: await readFile(path, 'utf8'),
        });
      },
    } as unknown as GuestStorage;
    const live = liveReceiver(migration, { storage: { vm: storage } });
    const staged = join(dir, 'move-snapshots-web.tar');
    await records.guest.at('web').put(store, spec({ location: 'h1', model: 'vm' }));
    for (const name of ['s1', 's2']) {
      await records.snapshot.at('web', name).put(store, {
        name,
        guest: 'web',
        createdAt: new Date(0).toISOString(),
        wasRunning: true,
        location: 'h1',
      });
    }
    const vm = { name: 'web', model: 'vm' };
    // A whole archive for a guest not handed over here is the cold move's refusal, as before.
    const whole = await archive({ 'rootfs.tar.zst': 'root', 'snapshots/s1.tar.zst': 'one' }, vm);
    await assert.rejects(
      live.receive('web', whole, new AbortController().signal),
      /Guest web is not being moved to h2/,
    );
    // A snapshots part whose payload does not match its checksum is refused, nothing kept.
    const bad = await archive({ 'snapshots/s1.tar.zst': 'one' }, vm);
    const text = await readFile(bad);
    await writeFile(bad, Buffer.from(text.toString('latin1').replace('one', 'two'), 'latin1'));
    await assert.rejects(
      live.receive('web', bad, new AbortController().signal),
      /corrupted: snapshots\/s1\.tar\.zst/,
    );
    await assert.rejects(stat(staged), { code: 'ENOENT' });
    // Only s1 sent while the guest has s1 and s2: the prepare is refused, nothing made, the part gone.
    await live.receive(
      'web',
      await archive({ 'snapshots/s1.tar.zst': 'one' }, vm),
      new AbortController().signal,
    );
    await stat(staged);
    await assert.rejects(live.prepareLive('web'), {
      code: 'FailedPrecondition',
      message: 'Guest web has snapshots (s1, s2) that were not sent to h2 (it has s1): move it again',
    });
    await assert.rejects(stat(staged), { code: 'ENOENT' });
    assert.deepEqual(calls, []);
    // Both sent: written into the new disk before QEMU starts, checksums verified, the part removed.
    const part = await archive({ 'snapshots/s1.tar.zst': 'one', 'snapshots/s2.tar.zst': 'two' }, vm);
    await live.receive('web', part, new AbortController().signal);
    await assert.rejects(stat(part), { code: 'ENOENT' }, 'moved aside for the prepare');
    await live.prepareLive('web');
    assert.deepEqual(calls, ['create web on h2', 'start QEMU after 2 snapshot(s)']);
    assert.deepEqual(imported, [
      { snapshot: 's1 on h2', bytes: 'one' },
      { snapshot: 's2 on h2', bytes: 'two' },
    ]);
    await assert.rejects(stat(staged), { code: 'ENOENT' });
    // The records stay the source's until its switch-over writes them.
    assert.equal((await records.snapshot.at('web', 's1').get(store))?.value.location, 'h1');
    // A discard drops a part that is waiting too.
    await live.receive(
      'web',
      await archive({ 'snapshots/s1.tar.zst': 'one' }, vm),
      new AbortController().signal,
    );
    await live.discard('web');
    await assert.rejects(stat(staged), { code: 'ENOENT' });
  });

  test("the receiver's sweep of imports/ keeps a part whose live move here is journaled, and everything of a guest it prepares (a sweep during the prepare's fill), and removes a part whose move is no longer journaled", async () => {
    const seen: string[][] = [];
    let live: SweepingReceiver | undefined;
    const migration = {
      async prepareIncoming(
        _s: GuestSpec,
        _image: unknown,
        options: { host: string; fill?: () => Promise<void> },
      ) {
        await options.fill?.();
        return {
          process: { pid: 1, startTime: 2 },
          endpoints: { host: options.host, nbdPort: 3, migrationPort: 4 },
          tls: { caCert: 'CA', cert: 'CERT', key: 'KEY' },
        };
      },
      async dropIncoming() {},
    } as unknown as LiveMigration;
    const storage = {
      async importTar() {
        // A sweep while the prepare writes the snapshots: its part and its work directory stay.
        await live?.sweep();
        seen.push((await readdir(dir)).map((f) => f.replace(/^\.move-web-.*$/, '.move-web-XXXXXX')).sort());
      },
    } as unknown as GuestStorage;
    live = createMoveReceiver({
      store,
      hostName: 'h2',
      storage: { vm: storage },
      runner: hostRunner(),
      workDir: dir,
      removeLocal: async () => {},
      live: {
        migrationOf: (model) => (model === 'vm' ? migration : undefined),
        image: async () => ({}) as never,
        host: '198.18.0.12',
        addressOf: async (member) => (member === 'h1' ? '198.18.0.11' : undefined),
      },
    });
    const staged = join(dir, 'move-snapshots-web.tar');
    await records.guest.at('web').put(store, spec({ location: 'h1', model: 'vm' }));
    await records.snapshot.at('web', 's1').put(store, {
      name: 's1',
      guest: 'web',
      createdAt: new Date(0).toISOString(),
      wasRunning: true,
      location: 'h1',
    });
    const vm = { name: 'web', model: 'vm' };
    const journal = {
      guest: 'web',
      from: 'h1',
      to: 'h2',
      reason: 'migration',
      startedAt: new Date().toISOString(),
      kind: 'live',
      phase: 'started',
    };
    await store.put(keys.guestMove('web'), JSON.stringify(journal));
    await live.receive(
      'web',
      await archive({ 'snapshots/s1.tar.zst': 'one' }, vm),
      new AbortController().signal,
    );
    await live.sweep();
    await stat(staged);
    await live.prepareLive('web');
    // (The prepare marks its copy first: move-incoming-web.)
    assert.deepEqual(seen, [['.move-web-XXXXXX', 'move-incoming-web', 'move-snapshots-web.tar']]);
    await assert.rejects(stat(staged), { code: 'ENOENT' });
    // That move undone: its source discards the copy.
    await live.discard('web');
    // A part whose move ended without its prepare (the source undid it; its daemon died): removed.
    await live.receive(
      'web',
      await archive({ 'snapshots/s1.tar.zst': 'one' }, vm),
      new AbortController().signal,
    );
    await store.delete(keys.guestMove('web'));
    const { removed: swept } = await live.sweep();
    assert.deepEqual(swept, [
      { name: 'move-snapshots-web.tar', why: 'no live move of guest web to h2 is journaled' },
    ]);
    await assert.rejects(stat(staged), { code: 'ENOENT' });
  });
});

describe('why a guest cannot move live', () => {
  const runner = (answer: RunResult | Error) => {
    const calls: string[][] = [];
    return {
      calls,
      runner: {
        async run(argv: readonly string[]) {
          calls.push([...argv]);
          if (answer instanceof Error) throw answer;
          return answer;
        },
        spawn: () => {
          throw new Error('not used');
        },
      } as ProcessRunner,
    };
  };

  test("ct: CRIU's own check is asked once, and its first line of complaint is the reason", async () => {
    const fake = runner({
      code: 1,
      stdout: '',
      stderr: '\nError (criu/kerndat.c:1234): Unable to foo\nmore\n',
    });
    const refusal = liveMoveRefusal(fake.runner);
    const ct = spec();
    assert.equal(
      await refusal(ct),
      'ct guests cannot move live: `criu check` fails on this host (Error (criu/kerndat.c:1234): Unable to foo); move it with --stateless (stopped, moved, started again)',
    );
    await refusal(ct);
    assert.deepEqual(fake.calls, [['criu', 'check']]);
  });

  test('ct without CRIU, pvm, and vm where the driver cannot migrate say so in one line, without a probe for the last two; vm where it can is not refused', async () => {
    const missing = runner(new Error('spawn criu ENOENT'));
    assert.match(
      (await liveMoveRefusal(missing.runner)(spec())) ?? '',
      /^ct guests cannot move live: CRIU is not installed on this host \(.*ENOENT.*\); move it with --stateless/,
    );
    const unused = runner({ code: 0, stdout: '', stderr: '' });
    const refusal = liveMoveRefusal(unused.runner);
    assert.match(
      (await refusal(spec({ model: 'pvm' }))) ?? '',
      /^pvm guests cannot move live: User-Mode Linux has no live migration/,
    );
    assert.match(
      (await refusal(spec({ model: 'vm' }))) ?? '',
      /^vm guests cannot move live: the vm driver of this member has no live migration; move it with --stateless/,
    );
    const migrating = liveMoveRefusal(unused.runner, { migrates: (m) => m === 'vm' });
    assert.equal(
      await migrating(spec({ model: 'vm' })),
      undefined,
      'vm guests move live where the driver can',
    );
    assert.deepEqual(unused.calls, []);
  });
});

describe('moving a vm guest live', () => {
  let store: KvEngine;
  let operations: OperationService;
  let files: Map<string, Set<string>>;
  let controllers: { stop(): void };
  let calls: string[];
  let mover: GuestMover;
  let fail: { migrate?: Error; finish?: Error; prepare?: Error };
  /** Set to hold migrateOut until the test lets it go (or the signal ends it). */
  let hold: Promise<void> | undefined;
  /** Set to hold the destination's answer to `finishLive` for good (the source's daemon dies waiting). */
  let finishHangs: boolean;
  /** The mover's dependencies, for a daemon started again. */
  let liveDeps: GuestMoverDeps;
  /** Where the fake storage writes a live move's snapshots archive. */
  let archives: string;
  /** Run while the guest migrates (a snapshot taken meanwhile, say). */
  let duringMigration: (() => Promise<void>) | undefined;
  /** The cluster's members as the mover reads them. */
  let liveMembers: Array<{ name: string; status: string }>;

  const guest = async () => (await records.guest.at('web').get(store))?.value;
  const end = async (op: Operation) => operations.wait(op.id);
  const process = { pid: 4242, startTime: 99 };
  const tls = { caCert: 'CA', cert: 'CERT', key: 'KEY' };

  beforeEach(async () => {
    store = createMemoryStore();
    operations = createOperationService(createEventBus());
    files = new Map([
      ['h1', new Set(['web'])],
      ['h2', new Set()],
    ]);
    controllers = fakeControllers(store, files);
    calls = [];
    fail = {};
    hold = undefined;
    finishHangs = false;
    duringMigration = undefined;
    liveMembers = [
      { name: 'h1', status: 'Online' },
      { name: 'h2', status: 'Online' },
    ];
    archives = await mkdtemp(join(tmpdir(), 'trivisor-live-move-'));
    await records.guestLocation.at('web').put(store, 'h1');
    await records.guest
      .at('web')
      .put(store, spec({ model: 'vm', config: { 'migration.downtime_limit': '120' } }));
    await waitForGuest(store, 'web', convergedTo(1));
    const migration: LiveMigration = {
      prepareIncoming: () => Promise.reject(new Error('the destination side is the receiver')),
      finishIncoming: () => Promise.reject(new Error('the destination side is the receiver')),
      dropIncoming: () => Promise.reject(new Error('the destination side is the receiver')),
      async migrateOut(s, options) {
        calls.push(
          `migrateOut ${s.location} -> ${options.to.host}:${options.to.migrationPort} limit ${options.downtimeLimitMs}${options.tls === tls ? '' : ' without the TLS the destination gave'}`,
        );
        options.onProgress?.({
          phase: 'copying RAM',
          diskDoneBytes: 10,
          diskTotalBytes: 10,
          ramTransferredBytes: 5,
          ramTotalBytes: 20,
        });
        if (hold) {
          await Promise.race([
            hold,
            new Promise<void>((_, reject) =>
              options.signal.addEventListener('abort', () =>
                reject(cancelled('The live move was cancelled')),
              ),
            ),
          ]);
        }
        if (duringMigration) await duringMigration();
        if (fail.migrate) throw fail.migrate;
        return { downtimeMs: 42, totalMs: 1000, mirrorMs: 400, ramMs: 600, diskBytes: 10, ramBytes: 20 };
      },
      async resumeSource(s) {
        calls.push(`resume ${s.location}`);
      },
      async recoverSource(s) {
        calls.push(`recover ${s.location}`);
        return ['the mirror job migration-mirror cancelled'];
      },
      async releaseSource(s) {
        calls.push(`release ${s.location}`);
      },
    };
    const transport: MoveTransport = {
      async send(member, name, archivePath) {
        calls.push(`send ${member} ${name} ${await readFile(archivePath, 'utf8')}`);
      },
      async discard(member, name) {
        calls.push(`discard ${member} ${name}`);
        files.get(member)?.delete(name);
      },
      async prepareLive(member, name) {
        calls.push(`prepare ${member} ${name}`);
        if (fail.prepare) throw fail.prepare;
        files.get(member)?.add(name);
        return { process, endpoints: { host: '198.18.0.2', nbdPort: 1, migrationPort: 2 }, tls };
      },
      async finishLive(member, name) {
        calls.push(
          `finish ${member} ${name} owner ${(await records.guestLocation.at(name).get(store))?.value}`,
        );
        if (fail.finish) throw fail.finish;
        if (finishHangs) await new Promise(() => {});
      },
    };
    liveDeps = {
      store,
      operations,
      hostName: 'h1',
      log: silentLogger(),
      members: async () => liveMembers,
      memberWatch: { everyMs: 10, goneAfterMs: 50 },
      transport,
      liveRefusal: async () => undefined,
      migrationOf: (model) => (model === 'vm' ? migration : undefined),
      removeLocal: async (s) => {
        calls.push(`removeLocal ${s.location}`);
        files.get(s.location)?.delete(s.name);
      },
      guests: { changeState: () => Promise.reject(new Error('a live move never stops the guest')) },
      storage: {
        // Only the snapshots' archive (decision 0088): the disk itself is mirrored.
        async createBackup(name, options) {
          assert.deepEqual(
            { withSnapshots: options.withSnapshots, snapshotsOnly: options.snapshotsOnly },
            { withSnapshots: true, snapshotsOnly: true },
            'a live move archives the snapshots alone',
          );
          const backup = options.name ?? '';
          calls.push(`archive the snapshots of ${name}`);
          return operations.start({
            project: 'default',
            description: 'backup',
            resources: {},
            run: async () => {
              const listed = valuesOf(await records.snapshot.list(store, name)).map((x) => x.name);
              await writeFile(join(archives, `${backup}.tar`), listed.join(','));
              return { backup };
            },
          });
        },
        backupFile: async (_guest, backup) => ({ path: join(archives, `${backup}.tar`), sizeBytes: 5 }),
        async deleteBackup(_guest, backup) {
          calls.push('drop the archive');
          await rm(join(archives, `${backup}.tar`));
        },
      },
    };
    mover = createGuestMover(liveDeps);
  });

  const snapshotOf = (name: string) =>
    records.snapshot.at('web', name).put(store, {
      name,
      guest: 'web',
      createdAt: new Date(0).toISOString(),
      wasRunning: true,
      location: 'h1',
    });
  const snapshotsWhere = async () =>
    valuesOf(await records.snapshot.list(store, 'web')).map((x) => `${x.name}@${x.location}`);

  test('a guest with snapshots: they go first, in an archive of the snapshots alone, before the destination is asked to get ready; the switch-over gives their records to the destination with the spec; the archive goes', async () => {
    await snapshotOf('s1');
    await snapshotOf('s2');
    const op = await end(await mover.move('web', { target: 'h2', live: true }));
    assert.equal(op.status, 'Success', op.error ?? '');
    assert.deepEqual(calls, [
      'archive the snapshots of web',
      'send h2 web s1,s2',
      'drop the archive',
      'prepare h2 web',
      'migrateOut h1 -> 198.18.0.2:2 limit 120',
      'finish h2 web owner h2',
      'removeLocal h1',
    ]);
    assert.deepEqual(await snapshotsWhere(), ['s1@h2', 's2@h2']);
    assert.deepEqual(await readdir(archives), []);
    assert.equal(await moveMarkOf(store, 'web'), undefined);
  });

  test('a guest on a shared pool with snapshots: nothing is sent (they are in the same disk file), the RAM alone moves, and the switch-over gives their records to the destination', async () => {
    await records.pool.at('nfs').put(store, {
      name: 'nfs',
      driver: 'dir',
      description: '',
      config: { source: '/srv/nfs' },
      createdAt: new Date(0).toISOString(),
      everyMember: true,
      shared: true,
      marker: 'm',
    });
    await records.guestPool
      .at('web')
      .put(store, { pool: 'nfs', path: '/srv/nfs/guests/web', limitBytes: null });
    await snapshotOf('s1');
    const op = await end(await mover.move('web', { target: 'h2', live: true }));
    assert.equal(op.status, 'Success', op.error ?? '');
    assert.equal(op.metadata.sharedDisk, true);
    assert.deepEqual(calls.slice(0, 2), ['prepare h2 web', 'migrateOut h1 -> 198.18.0.2:2 limit 120']);
    assert.equal(calls.filter((c) => c.startsWith('send') || c.startsWith('archive')).length, 0);
    assert.deepEqual(await snapshotsWhere(), ['s1@h2']);
  });

  test("a guest with snapshots whose move fails, during the migration or after the switch-over: the guest and its snapshots are the source's, the destination discards what it has", async () => {
    await snapshotOf('s1');
    fail.migrate = new Error('The RAM migration failed: Connection reset');
    let op = await end(await mover.move('web', { target: 'h2', live: true }));
    assert.equal(op.status, 'Failure');
    assert.deepEqual(calls.slice(-2), ['migrateOut h1 -> 198.18.0.2:2 limit 120', 'discard h2 web']);
    assert.deepEqual(await snapshotsWhere(), ['s1@h1']);
    delete fail.migrate;
    fail.finish = new Error('QEMU refused cont');
    calls = [];
    op = await end(await mover.move('web', { target: 'h2', live: true }));
    assert.equal(op.status, 'Failure');
    assert.deepEqual(calls.slice(-3), ['finish h2 web owner h2', 'resume h1', 'discard h2 web']);
    assert.deepEqual(await snapshotsWhere(), ['s1@h1']);
    assert.equal((await guest())?.location, 'h1');
    assert.deepEqual(await readdir(archives), []);
  });

  test("a snapshot taken or deleted during the migration is not in the destination's disk: the switch-over is refused (Conflict, naming both lists) and the guest runs on at the source", async () => {
    await snapshotOf('s1');
    duringMigration = async () => {
      await snapshotOf('s2');
    };
    const op = await end(await mover.move('web', { target: 'h2', live: true }));
    assert.equal(op.status, 'Failure');
    assert.equal(op.metadata.errorCode, 'Conflict');
    assert.match(
      op.error ?? '',
      /Guest web's snapshots changed while it was being moved \(s1 sent, s1, s2 now\); retry; it stays running on h1$/,
    );
    assert.deepEqual(calls.slice(-2), ['resume h1', 'discard h2 web']);
    assert.deepEqual(await snapshotsWhere(), ['s1@h1', 's2@h1']);
    assert.equal((await guest())?.location, 'h1');
  });

  test("a daemon that died during the migration (the records still the source's), started again, drops the destination's waiting QEMU first, then undoes the migration in the source's QEMU and resumes the guest there", async () => {
    hold = new Promise(() => {});
    await mover.move('web', { target: 'h2', live: true });
    await waitUntil(() => calls.some((c) => c.startsWith('migrateOut')));
    assert.equal((await moveMarkOf(store, 'web'))?.phase, 'started');
    calls.length = 0;
    assert.equal(await createGuestMover(liveDeps).resumeUnfinished(), 1);
    assert.deepEqual(calls, ['discard h2 web', 'recover h1']);
    const resumed = operations.list().find((o) => o.description.startsWith('Finishing the move'));
    assert.deepEqual(resumed?.metadata.undoneInQemu, ['the mirror job migration-mirror cancelled']);
    assert.equal((await guest())?.location, 'h1');
    assert.deepEqual([...(files.get('h2') ?? [])], []);
    assert.deepEqual([...(files.get('h1') ?? [])], ['web']);
    assert.equal(await moveMarkOf(store, 'web'), undefined);
  });

  test("a move that runs is its daemon's, not an unfinished one: resumeUnfinished leaves it alone", async () => {
    hold = new Promise(() => {});
    const started = await mover.move('web', { target: 'h2', live: true });
    await waitUntil(() => calls.some((c) => c.startsWith('migrateOut')));
    calls.length = 0;
    assert.equal(await (mover as ResumingMover).resumeUnfinished(), 0);
    assert.deepEqual(calls, []);
    operations.cancel(started.id);
    assert.equal((await end(started)).status, 'Cancelled');
  });

  test('a destination that cannot run the guest after the switch-over, when the records cannot be given back either: the source stays paused (never run twice), the journal is kept, and the next try finishes the move there', async () => {
    const refusing = { on: true };
    const { log, errors } = recordingLogger();
    const living = createGuestMover({ ...liveDeps, log, store: refusingUndo(store, refusing) });
    fail.finish = new Error('QEMU refused cont');
    const op = await end(await living.move('web', { target: 'h2', live: true }));
    assert.equal(op.status, 'Failure');
    assert.match(op.error ?? '', /QEMU refused cont; it could not be undone either \(its records name h2\)/);
    assert.deepEqual(calls, [
      'prepare h2 web',
      'migrateOut h1 -> 198.18.0.2:2 limit 120',
      'finish h2 web owner h2',
    ]);
    await waitUntil(() => errors.some((m) => m.includes('its journal is kept')));
    assert.equal((await moveMarkOf(store, 'web'))?.phase, 'handed-over', 'the journal is kept');
    delete fail.finish;
    refusing.on = false;
    calls.length = 0;
    // Its next try (the timer's): once the ended move is no longer this daemon's running one.
    await waitUntilAsync(async () => (await living.resumeUnfinished()) === 1);
    assert.deepEqual(calls, ['finish h2 web owner h2', 'removeLocal h1']);
    assert.equal((await guest())?.location, 'h2');
    assert.equal(await moveMarkOf(store, 'web'), undefined);
  });

  test('a daemon that died after the switch-over, started again, tells the destination to run the guest and only then drops its own copy', async () => {
    finishHangs = true;
    await mover.move('web', { target: 'h2', live: true });
    await waitUntil(() => calls.some((c) => c.startsWith('finish')));
    assert.equal((await moveMarkOf(store, 'web'))?.phase, 'handed-over');
    finishHangs = false;
    calls.length = 0;
    assert.equal(await createGuestMover(liveDeps).resumeUnfinished(), 1);
    assert.deepEqual(calls, ['finish h2 web owner h2', 'removeLocal h1']);
    assert.equal((await guest())?.location, 'h2');
    assert.equal((await guest())?.desired, 'Running');
    assert.deepEqual([...(files.get('h1') ?? [])], []);
    assert.equal(await moveMarkOf(store, 'web'), undefined);
  });

  test("a guest with a snapshot whose daemon died after the switch-over: the journal holds the snapshot's record as it was, the record is the destination's, and the resume finishes the move with it there", async () => {
    await snapshotOf('s1');
    finishHangs = true;
    await mover.move('web', { target: 'h2', live: true });
    await waitUntil(() => calls.some((c) => c.startsWith('finish')));
    const mark = await moveMarkOf(store, 'web');
    assert.deepEqual(
      mark?.before?.snapshots.map((x) => `${x.name}@${x.location}`),
      ['s1@h1'],
      'what an undoing would put back',
    );
    assert.deepEqual(await snapshotsWhere(), ['s1@h2']);
    finishHangs = false;
    calls.length = 0;
    assert.equal(await createGuestMover(liveDeps).resumeUnfinished(), 1);
    // The journal names the snapshots' archive (gone since it was sent): removed again, for a
    // daemon that died while it was being written.
    assert.deepEqual(calls, ['finish h2 web owner h2', 'removeLocal h1', 'drop the archive']);
    assert.deepEqual(await snapshotsWhere(), ['s1@h2']);
    assert.equal(await moveMarkOf(store, 'web'), undefined);
  });

  afterEach(async () => {
    // A move a test left waiting (its daemon "died" in the test) must not go on into the next
    // test: its closures read that test's members and calls (its destination watch saw the next
    // test's Offline member once, and its undoing discarded into that test's calls).
    const waiting = operations.list().filter((o) => !isFinal(o) && o.mayCancel);
    for (const o of waiting) operations.cancel(o.id);
    // (One held in a destination's finishLive that never answers stays held: it is past its watch.)
    await Promise.all(waiting.map((o) => operations.wait(o.id, 2000)));
    controllers.stop();
    await store.close();
    await rm(archives, { recursive: true, force: true });
  });

  test('the destination gets ready, the guest migrates, the records change owner at switch-over, then it runs there and the source copy goes; the downtime is in the metadata', async () => {
    const op = await end(await mover.move('web', { target: 'h2', live: true }));
    assert.equal(op.status, 'Success', op.error ?? '');
    assert.deepEqual(calls, [
      'prepare h2 web',
      'migrateOut h1 -> 198.18.0.2:2 limit 120',
      'finish h2 web owner h2',
      'removeLocal h1',
    ]);
    assert.equal(op.metadata.location, 'h2');
    assert.equal(op.metadata.downtimeMs, 42);
    assert.equal(op.metadata.downtimeLimitMs, 120);
    assert.equal(op.metadata.ramTransferredBytes, 20);
    assert.equal(typeof op.metadata.pausedMs, 'number');
    assert.equal(typeof op.metadata.totalMs, 'number');
    const moved = await guest();
    assert.equal(moved?.location, 'h2');
    assert.equal(moved?.desired, 'Running');
    assert.equal((await records.guestStatus.at('web').get(store))?.value.status, 'Running');
    assert.deepEqual([...(files.get('h1') ?? [])], []);
  });

  test('a migration that fails leaves the guest running on the source, its records untouched, and nothing on the destination', async () => {
    fail.migrate = new Error('The RAM migration failed: Connection reset');
    const before = await records.guest.at('web').get(store);
    const op = await end(await mover.move('web', { target: 'h2', live: true }));
    assert.equal(op.status, 'Failure');
    assert.equal(
      op.error,
      'Cannot move guest web live to h2: The RAM migration failed: Connection reset; it stays running on h1',
    );
    assert.deepEqual(calls, ['prepare h2 web', 'migrateOut h1 -> 198.18.0.2:2 limit 120', 'discard h2 web']);
    assert.equal((await records.guest.at('web').get(store))?.modRevision, before?.modRevision);
    assert.deepEqual([...(files.get('h2') ?? [])], []);
    assert.deepEqual([...(files.get('h1') ?? [])], ['web']);
  });

  test('a cancelled live move ends Cancelled with the guest on the source and nothing on the destination', async () => {
    hold = new Promise(() => {});
    const started = await mover.move('web', { target: 'h2', live: true });
    assert.equal(started.mayCancel, true);
    while (!calls.some((c) => c.startsWith('migrateOut'))) await new Promise((r) => setTimeout(r, 5));
    operations.cancel(started.id);
    const op = await end(started);
    assert.equal(op.status, 'Cancelled');
    assert.deepEqual(calls, ['prepare h2 web', 'migrateOut h1 -> 198.18.0.2:2 limit 120', 'discard h2 web']);
    assert.equal((await guest())?.location, 'h1');
    assert.deepEqual([...(files.get('h2') ?? [])], []);
  });

  test('a destination that goes Offline during the migration: the migration is stopped, the guest runs on at the source, the error names the member', {
    timeout: 20_000,
  }, async () => {
    hold = new Promise(() => {});
    const started = await mover.move('web', { target: 'h2', live: true });
    while (!calls.some((c) => c.startsWith('migrateOut'))) await new Promise((r) => setTimeout(r, 5));
    liveMembers = liveMembers.map((m) => (m.name === 'h2' ? { ...m, status: 'Offline' } : m));
    const op = await end(started);
    assert.equal(op.status, 'Failure');
    assert.equal(op.metadata.errorCode, 'Unavailable');
    assert.equal(
      op.error,
      'Cannot move guest web live to h2: h2 went Offline while the guest was being moved to it; it stays running on h1',
    );
    assert.deepEqual(calls, ['prepare h2 web', 'migrateOut h1 -> 198.18.0.2:2 limit 120', 'discard h2 web']);
    assert.equal((await guest())?.location, 'h1');
    assert.deepEqual([...(files.get('h2') ?? [])], []);
  });

  test('a destination that cannot run the guest after the switch-over: the records come back, the source resumes, the destination copy goes', async () => {
    fail.finish = new Error('QEMU refused cont');
    const op = await end(await mover.move('web', { target: 'h2', live: true }));
    assert.equal(op.status, 'Failure');
    assert.match(
      op.error ?? '',
      /^Cannot move guest web live to h2: QEMU refused cont; it stays running on h1$/,
    );
    assert.deepEqual(calls, [
      'prepare h2 web',
      'migrateOut h1 -> 198.18.0.2:2 limit 120',
      'finish h2 web owner h2',
      'resume h1',
      'discard h2 web',
    ]);
    assert.equal((await guest())?.location, 'h1');
    assert.equal((await records.guestLocation.at('web').get(store))?.value, 'h1');
  });

  test('a destination that already holds files of the guest refuses, and keeps them', async () => {
    fail.prepare = conflict('This member already has files of guest web');
    const op = await end(await mover.move('web', { target: 'h2', live: true }));
    assert.equal(op.status, 'Failure');
    assert.equal(op.metadata.errorCode, 'Conflict');
    assert.deepEqual(calls, ['prepare h2 web']);
  });

  test('an HA guest moved live: its record says moving during the migration, and the switch-over gives it to the destination in the same transaction as the spec', async () => {
    const { tokens } = await makeHa(store);
    let during: unknown;
    hold = (async () => {
      await waitUntil(() => calls.some((c) => c.startsWith('migrateOut')));
      during = (await haRecordOf(store))?.moving;
    })();
    const op = await end(await mover.move('web', { target: 'h2', live: true }));
    assert.equal(op.status, 'Success', op.error ?? '');
    assert.deepEqual(during, { to: 'h2', token: tokens.h2, reason: 'migration' });
    const after = await haRecordOf(store);
    assert.equal(after.owner, 'h2');
    assert.equal(after.token, tokens.h2);
    assert.equal(after.moving, undefined);
    assert.equal(after.modRevision, (await records.guest.at('web').get(store))?.modRevision);
  });

  test("an HA guest whose live move fails, before or after the switch-over, is its source's again, unmarked, under its token", async () => {
    const { tokens } = await makeHa(store);
    fail.migrate = new Error('The RAM migration failed: Connection reset');
    assert.equal((await end(await mover.move('web', { target: 'h2', live: true }))).status, 'Failure');
    let r = await haRecordOf(store);
    assert.deepEqual([r.owner, r.token, r.moving], ['h1', tokens.h1, undefined]);
    delete fail.migrate;
    fail.finish = new Error('QEMU refused cont');
    assert.equal((await end(await mover.move('web', { target: 'h2', live: true }))).status, 'Failure');
    r = await haRecordOf(store);
    assert.deepEqual([r.owner, r.token, r.moving], ['h1', tokens.h1, undefined]);
    assert.equal((await guest())?.location, 'h1');
  });

  test("an HA guest whose live move fails before the switch-over while this member's HA agent holds no live lease: the guest runs on here, its journal is kept, and the next try ends the HA mark under the agent's new lease", async () => {
    const { tokens } = await makeHa(store);
    let agentToken: number | undefined;
    // The agent's lease expired during the migration; it holds no new one yet.
    duringMigration = async () => {
      await store.delete(haKeys.heartbeat('h1'));
    };
    fail.migrate = new Error('The RAM migration failed: Connection reset');
    const living = createGuestMover({ ...liveDeps, haToken: () => agentToken, haLeaseWaitMs: 50 });
    const op = await end(await living.move('web', { target: 'h2', live: true }));
    assert.equal(
      op.error,
      "Cannot move guest web live to h2: The RAM migration failed: Connection reset; it stays running on h1, but its HA record still says it moves (this member's HA agent holds no live lease): h1 ends that from the move's journal within minutes",
    );
    const kept = await moveMarkOf(store, 'web');
    assert.deepEqual([kept?.phase, kept?.ha?.toToken], ['started', tokens.h2], 'the journal is kept');
    assert.equal((await haRecordOf(store)).moving?.to, 'h2');
    assert.equal((await guest())?.location, 'h1');
    agentToken = await (async () => {
      await store.put(haKeys.heartbeat('h1'), JSON.stringify({ member: 'h1' }));
      return (await store.get(haKeys.heartbeat('h1')))?.createRevision;
    })();
    calls = [];
    await waitUntilAsync(async () => (await living.resumeUnfinished()) === 1);
    const back = await haRecordOf(store);
    assert.deepEqual([back.owner, back.token, back.moving], ['h1', agentToken, undefined]);
    assert.equal(await moveMarkOf(store, 'web'), undefined);
    assert.deepEqual(calls, ['discard h2 web', 'recover h1']);
  });

  test("the CRM's decision racing the switch-over: HA ended the move during the migration (its destination was lost), so the switch-over does not happen and the guest runs on", async () => {
    const { tokens, record } = await makeHa(store);
    hold = (async () => {
      await waitUntil(() => calls.some((c) => c.startsWith('migrateOut')));
      // The CRM's write: the destination lost its lease, the source has the guest again.
      await store.delete(haKeys.heartbeat('h2'));
      await store.put(haKeys.guest('web'), JSON.stringify(record));
    })();
    const op = await end(await mover.move('web', { target: 'h2', live: true }));
    assert.equal(op.status, 'Failure');
    assert.match(op.error ?? '', /HA ended guest web's move to h2 meanwhile/);
    assert.deepEqual(calls.slice(-2), ['resume h1', 'discard h2 web']);
    assert.equal((await guest())?.location, 'h1');
    const r = await haRecordOf(store);
    assert.deepEqual([r.owner, r.token, r.moving], ['h1', tokens.h1, undefined]);
  });

  test('refusals of a live move are one line and change nothing: a stopped guest, one with a volume attached (named), a bad downtime limit, a model without live migration', async () => {
    const refused = async () => {
      try {
        await mover.move('web', { target: 'h2', live: true });
      } catch (e) {
        assert.ok(isTrivisorError(e));
        assert.doesNotMatch(e.message, /\n/);
        return `${e.code}: ${e.message}`;
      }
      assert.fail('moved');
    };
    const now = await records.guest.at('web').get(store);
    assert.ok(now);
    await records.guest.at('web').put(store, {
      ...now.value,
      generation: 2,
      disks: { data: { type: 'disk', pool: 'default', source: 'data' } },
    });
    await waitForGuest(store, 'web', convergedTo(2));
    assert.equal(
      await refused(),
      'FailedPrecondition: Guest web has volumes attached (default/data): volumes do not move with their guest yet; detach them first',
    );
    await records.guest.at('web').put(store, {
      ...now.value,
      generation: 3,
      config: { 'migration.downtime_limit': 'soon' },
    });
    await waitForGuest(store, 'web', convergedTo(3));
    assert.match(
      await refused(),
      /^InvalidArgument: migration\.downtime_limit="soon" must be a whole number/,
    );
    await records.guest.at('web').put(store, { ...now.value, generation: 4, desired: 'Stopped' });
    await waitForGuest(store, 'web', convergedTo(4));
    assert.equal(
      await refused(),
      'FailedPrecondition: Guest web is Stopped: a live move needs it running; move it without --live',
    );
    await records.guest.at('web').put(store, { ...now.value, generation: 5, model: 'pvm' });
    await waitForGuest(store, 'web', convergedTo(5));
    assert.equal(await refused(), 'NotSupported: pvm guests cannot move live from h1');
    assert.deepEqual(calls, []);
    assert.equal((await guest())?.location, 'h1');
  });
});

describe("releasing the marks of a lost member's moves", () => {
  let store: KvEngine;
  let status: Record<string, string>;
  let clock: number;
  let mover: ResumingMover;
  const BOUND = 15 * 60_000;

  /** A move of guest `name` from h1 to h2 journaled at `phase`, its records as `where` says. */
  async function journal(name: string, phase: 'started' | 'handed-over' | 'sent', where: string) {
    const before = spec({ name, location: 'h1' });
    await records.guest.at(name).put(store, { ...before, location: where, generation: 2 });
    await records.guestLocation.at(name).put(store, where);
    const mark = {
      guest: name,
      from: 'h1',
      to: 'h2',
      reason: 'migration',
      startedAt: new Date(0).toISOString(),
      kind: 'archive',
      phase,
      wasRunning: true,
      ...(phase !== 'started' && {
        generation: 2,
        before: { spec: before, status: aGuestStatus(), snapshots: [] },
      }),
    };
    await store.put(keys.guestMove(name), JSON.stringify(mark));
  }
  const marked = async () =>
    (await store.list(keys.guestMovePrefix)).kvs.map((kv) => JSON.parse(kv.value).guest as string).sort();
  /**
   * Guest web's HA move from h1 to h2 journaled at `phase` (`journal`), with its HA ticket and
   * `extra` in the mark, and its HA record as the switch-over left it: h2's, under the move's token.
   */
  async function haJournal(
    phase: 'handed-over' | 'sent',
    ha: { tokens: Record<string, number>; record: object },
    extra: { kind?: 'shared' | 'archive'; wasRunning?: boolean } = {},
  ) {
    const { tokens, record } = ha;
    await journal('web', phase, 'h2');
    const kv = await store.get(keys.guestMove('web'));
    const ticket = {
      guest: 'web',
      from: 'h1',
      fromToken: tokens.h1,
      to: 'h2',
      toToken: tokens.h2,
      reason: 'migration',
      ...(extra.wasRunning && { wasRunning: true }),
    };
    const mark = { ...JSON.parse(kv?.value ?? '{}'), ...extra, ha: ticket };
    await store.put(keys.guestMove('web'), JSON.stringify(mark));
    await store.put(haKeys.guest('web'), JSON.stringify({ ...record, owner: 'h2', token: tokens.h2 }));
  }

  beforeEach(() => {
    store = createMemoryStore();
    status = { h1: 'Offline', h2: 'Online', h3: 'Online' };
    clock = Date.parse('2026-12-06T12:00:00Z');
    mover = createGuestMover({
      store,
      operations: createOperationService(createEventBus()),
      hostName: 'h2',
      log: silentLogger(),
      members: async () => Object.entries(status).map(([name, s]) => ({ name, status: s })),
      transport: {} as MoveTransport,
      liveRefusal: async () => undefined,
      removeLocal: async () => {},
      guests: { changeState: () => Promise.reject(new Error('nothing is started or stopped')) },
      storage: {} as GuestMoverDeps['storage'],
      now: () => clock,
    });
  });
  afterEach(async () => {
    await store.close();
  });

  test("once its source has been gone for the bound, a mark whose records moved on without it is released (the guest given to another member, or deleted); one whose source's copy may be the only whole one, or whose guest is still on the source, stays", async () => {
    await journal('given-away', 'handed-over', 'h3');
    await journal('started-elsewhere', 'started', 'h3');
    await journal('empty-copy', 'handed-over', 'h2');
    await journal('whole-there', 'sent', 'h2');
    await journal('still-on-source', 'started', 'h1');
    await journal('deleted', 'handed-over', 'h2');
    await store.delete(records.guest.key('deleted'));
    const all = await marked();
    // First seen gone now: nothing yet, nor a minute short of the bound.
    assert.deepEqual(await mover.releaseAbandoned(), []);
    clock += BOUND - 60_000;
    assert.deepEqual(await mover.releaseAbandoned(), []);
    assert.deepEqual(await marked(), all);
    clock += 60_000;
    assert.deepEqual((await mover.releaseAbandoned()).sort(), ['deleted', 'given-away', 'started-elsewhere']);
    assert.deepEqual(await marked(), ['empty-copy', 'still-on-source', 'whole-there']);
    clock += 24 * 3_600_000;
    assert.deepEqual(await mover.releaseAbandoned(), [], 'the rest stay for their source or cluster remove');
  });

  test("once its source has been gone for the bound, a mark whose destination has the whole guest and ran it (its spec changed since the hand-over, decision 0108) is released; an archive's copy on the source is left to its sweep", async () => {
    await journal('ran-there', 'sent', 'h2');
    await journal('shared-ran', 'handed-over', 'h2');
    await journal('sent-untouched', 'sent', 'h2');
    const kv = await store.get(keys.guestMove('shared-ran'));
    await store.put(
      keys.guestMove('shared-ran'),
      JSON.stringify({ ...JSON.parse(kv?.value ?? '{}'), kind: 'shared' }),
    );
    for (const name of ['ran-there', 'shared-ran']) {
      const now = await records.guest.at(name).get(store);
      assert.ok(now);
      await records.guest.at(name).put(store, { ...now.value, desired: 'Running', generation: 3 });
    }
    assert.deepEqual(await mover.releaseAbandoned(), []);
    clock += BOUND;
    assert.deepEqual((await mover.releaseAbandoned()).sort(), ['ran-there', 'shared-ran']);
    assert.deepEqual(await marked(), ['sent-untouched'], 'one its source would still start stays');
    const discards = (await store.list(keys.moveDiscards('h1'))).kvs.map((k) => k.key);
    assert.deepEqual(
      discards,
      [keys.moveDiscard('h1', 'ran-there')],
      "the archive's copy on h1 is left to its sweep",
    );
  });

  test("an HA guest's mark whose records are the destination's as the hand-over left them is released only once HA decided about the guest since (a new token of the destination's)", async () => {
    const ha = await makeHa(store, ['h1', 'h2']);
    const { record } = ha;
    // As the switch-over left it: h2 holds it under the token the move was given.
    await haJournal('handed-over', ha);
    assert.deepEqual(await mover.releaseAbandoned(), []);
    clock += BOUND;
    assert.deepEqual(
      await mover.releaseAbandoned(),
      [],
      "the archive never came: the source's copy is the whole one",
    );
    // h2 lost its lease and took a new one; HA gave the guest again under it.
    await store.delete(haKeys.heartbeat('h2'));
    await store.put(haKeys.heartbeat('h2'), JSON.stringify({ member: 'h2' }));
    const h2Now = (await store.get(haKeys.heartbeat('h2')))?.createRevision;
    await store.put(haKeys.guest('web'), JSON.stringify({ ...record, owner: 'h2', token: h2Now }));
    assert.deepEqual(await mover.releaseAbandoned(), ['web']);
    assert.deepEqual(await marked(), []);
  });

  test('an HA guest moved here whose source was lost to HA after the hand-over, before it started the guest, is started here at once (decision 0108): only one whole here, that ran, as the hand-over left it', async () => {
    const ha = await makeHa(store, ['h1', 'h2']);
    const { tokens, record } = ha;
    /** web's move journaled as `kind` at `phase`; spec and HA record as the hand-over wrote them. */
    const handedOver = async (
      kind: 'shared' | 'archive',
      phase: 'handed-over' | 'sent',
      wasRunning = true,
    ) => {
      await haJournal(phase, ha, { kind, wasRunning });
      const now = await records.guest.at('web').get(store);
      assert.ok(now);
      await records.guest.at('web').put(store, { ...now.value, desired: 'Stopped', generation: 2 });
    };
    const specNow = async () => (await records.guest.at('web').get(store))?.value;

    await handedOver('shared', 'handed-over');
    assert.deepEqual(
      await mover.startForLostSources(),
      [],
      'the source holds its lease: its mover starts it',
    );
    await store.delete(haKeys.heartbeat('h1'));
    await handedOver('archive', 'handed-over');
    assert.deepEqual(
      await mover.startForLostSources(),
      [],
      "an archive not sent: the source's copy is the whole one",
    );
    await handedOver('shared', 'handed-over', false);
    assert.deepEqual(await mover.startForLostSources(), [], 'it was stopped when it moved');
    await handedOver('shared', 'handed-over');
    await store.put(
      haKeys.guest('web'),
      JSON.stringify({ ...record, owner: 'h2', token: (tokens.h2 ?? 0) + 1000 }),
    );
    assert.deepEqual(await mover.startForLostSources(), [], 'HA decided about it since');
    await handedOver('shared', 'handed-over');
    const now = await records.guest.at('web').get(store);
    assert.ok(now);
    await records.guest.at('web').put(store, { ...now.value, desired: 'Stopped', generation: 3 });
    assert.deepEqual(await mover.startForLostSources(), [], 'its spec changed since the hand-over');
    assert.equal((await specNow())?.desired, 'Stopped');

    await handedOver('shared', 'handed-over');
    assert.deepEqual(await mover.startForLostSources(), ['web']);
    assert.deepEqual([(await specNow())?.desired, (await specNow())?.generation], ['Running', 3]);
    assert.deepEqual(await mover.startForLostSources(), [], 'once');
    assert.deepEqual(await marked(), ['web'], "the journal stays for the source's resume");

    // An archive sent, its source's agent under another lease than the move began under.
    await store.put(haKeys.heartbeat('h1'), JSON.stringify({ member: 'h1' }));
    await handedOver('archive', 'sent');
    assert.deepEqual(await mover.startForLostSources(), ['web']);
    assert.equal((await specNow())?.desired, 'Running');
  });

  test('a source seen back before the bound starts the count again; an Online or evacuated source, or this member, is never a lost one', async () => {
    await journal('given-away', 'handed-over', 'h3');
    assert.deepEqual(await mover.releaseAbandoned(), []);
    clock += BOUND - 1_000;
    status.h1 = 'Online';
    assert.deepEqual(await mover.releaseAbandoned(), []);
    status.h1 = 'Offline';
    clock += 2_000;
    assert.deepEqual(await mover.releaseAbandoned(), [], 'seen gone again only now');
    clock += BOUND;
    status.h1 = 'Evacuated';
    assert.deepEqual(await mover.releaseAbandoned(), []);
    assert.deepEqual(await marked(), ['given-away']);
    // Its own marks are this member's to resume, not to release.
    const own = createGuestMover({
      store,
      operations: createOperationService(createEventBus()),
      hostName: 'h1',
      log: silentLogger(),
      members: async () => [{ name: 'h1', status: 'Offline' }],
      transport: {} as MoveTransport,
      liveRefusal: async () => undefined,
      removeLocal: async () => {},
      guests: { changeState: () => Promise.reject(new Error('nothing is started or stopped')) },
      storage: {} as GuestMoverDeps['storage'],
      now: () => clock,
    });
    assert.deepEqual(await own.releaseAbandoned(), []);
    clock += BOUND;
    assert.deepEqual(await own.releaseAbandoned(), []);
    // Gone (Offline, or powered off: Standby) past the bound: released.
    status.h1 = 'Standby';
    assert.deepEqual(await mover.releaseAbandoned(), []);
    clock += BOUND;
    assert.deepEqual(await mover.releaseAbandoned(), ['given-away']);
  });
});
