import { setTimeout as sleep } from 'node:timers/promises';
import { cancelled, failedPrecondition, internal, unavailable } from '../../core/errors.ts';
import type { IncomingEndpoints, MigrationProgress, MigrationResult } from '../live-migration.ts';
import type { QmpCallOptions, QmpClient } from './qmp-client.ts';

/**
 * Live migration of a vm guest over QMP (issue 13 part 1; decision 0042), the drive-mirror +
 * migrate pattern libvirt uses for local disks: the destination's QEMU waits with
 * `-incoming defer -S` and exports its empty root disk over NBD; the source mirrors its root
 * disk into that export (`blockdev-mirror`), then once the mirror is ready migrates RAM over
 * TCP; at the end the source is paused, and cancelling the ready mirror syncs its last writes
 * and leaves both disks equal. The destination resumes only when told (`finishIncoming`), after
 * the guest's records name it. Pure sequencing over a QMP connection, tested against a fake QMP.
 */

/** The QMP a migration needs: commands only (everything is polled, so a fake can script it). */
export type MigrationQmp = Pick<QmpClient, 'execute'>;

/** The NBD export's name and the source's job and node names (fixed: one migration per guest at a time). */
export const EXPORT_NAME = 'root';
const EXPORT_ID = 'migration-export';
const MIRROR_JOB = 'migration-mirror';
const TARGET_NODE = 'migration-target';
const TLS_ID = 'migration-tls';

/**
 * QEMU's `dirty-bitmaps` capability: the named node's dirty bitmaps (the backup bitmap named for
 * its link, vm-incremental.ts) are sent in the migration stream and made on the destination's node
 * of the same name, persistent if they were, so the destination's QEMU stores them in its disk.
 */
const dirtyBitmaps = (state: boolean) => [{ capability: 'dirty-bitmaps', state }];
const DIRTY_BITMAPS = dirtyBitmaps(true);

/**
 * Whether any block node of this QEMU has a named dirty bitmap (a backup bitmap) to carry. QEMU
 * 7.2 must not migrate with `dirty-bitmaps` on while there is none: the migration then marks its
 * bitmap state "no bitmaps" and never clears it (the mark is cleared only by the set-up that the
 * mark itself skips), so every later migration of that QEMU carries no bitmap, even one added
 * since. A move cancelled before the guest's first backup thus lost the chain on the next move
 * (issue 13 §5; decision 0062).
 */
export async function hasNamedBitmaps(qmp: MigrationQmp): Promise<boolean> {
  const nodes = await qmp.execute<unknown>('query-named-block-nodes', { flat: true });
  if (!Array.isArray(nodes)) return false;
  return nodes.some((n: { 'dirty-bitmaps'?: Array<{ name?: string }> }) =>
    (n['dirty-bitmaps'] ?? []).some((b) => typeof b.name === 'string' && b.name !== ''),
  );
}
/** The name a bitmap's bits wait under while `rearmBitmaps` makes it again (never carried: see there). */
const REARM_BITMAP = 'migration-rearm';

interface NodeBitmaps {
  'node-name': string;
  'dirty-bitmaps'?: Array<{ name?: string; granularity: number; recording?: boolean; persistent?: boolean }>;
}

/**
 * Makes each persistent named bitmap of this QEMU again, under its name, with its bits, its
 * granularity and its recording state, when this QEMU has migrated out before (`query-migrate`
 * names a status): QEMU 7.2 marks every bitmap a migration carries not to be stored by the source
 * (its `skip_store`, set when the migration starts: the destination stores it) and nothing clears
 * the mark when the migration is cancelled or fails (one that completed is not left so: the source's
 * `cont` takes its disk back and QEMU loads the bitmaps again, seen with real QEMUs). A bitmap so
 * marked still says `persistent: true` to `query-named-block-nodes`, but the next migration sends
 * it as not persistent (decision 0062, amended: confirmed with two real QEMUs), the destination
 * never stores it, and the chain's next backup is a full one. A bitmap made by
 * `block-dirty-bitmap-add` has no mark. No write of the guest is missed: its bits wait in a
 * recording bitmap of their own (REARM_BITMAP) while the bitmap is removed, and come back to it in
 * the transaction that adds it again. Answers the bitmaps made again.
 */
export async function rearmBitmaps(qmp: MigrationQmp): Promise<string[]> {
  const { status } = await qmp.execute<{ status?: string }>('query-migrate');
  if (status === undefined || status === 'none') return [];
  const nodes = await qmp.execute<NodeBitmaps[]>('query-named-block-nodes', { flat: true });
  const made: string[] = [];
  for (const n of Array.isArray(nodes) ? nodes : []) {
    const node = n['node-name'];
    for (const b of n['dirty-bitmaps'] ?? []) {
      if (!b.name || b.name === REARM_BITMAP || b.persistent !== true) continue;
      const name = b.name;
      const action = (type: string, data: Record<string, unknown>) => ({ type, data: { node, ...data } });
      await qmp.execute('transaction', {
        actions: [
          action('block-dirty-bitmap-add', { name: REARM_BITMAP, granularity: b.granularity }),
          action('block-dirty-bitmap-merge', { target: REARM_BITMAP, bitmaps: [name] }),
        ],
      });
      try {
        await qmp.execute('transaction', { actions: [action('block-dirty-bitmap-remove', { name })] });
        await qmp.execute('transaction', {
          actions: [
            action('block-dirty-bitmap-add', {
              name,
              granularity: b.granularity,
              persistent: true,
              ...(b.recording === false && { disabled: true }),
            }),
            action('block-dirty-bitmap-merge', { target: name, bitmaps: [REARM_BITMAP] }),
            action('block-dirty-bitmap-remove', { name: REARM_BITMAP }),
          ],
        });
      } catch (e) {
        // The bits in the waiting bitmap go with it: a bitmap lost makes the next backup a full one.
        await qmp.execute('block-dirty-bitmap-remove', { node, name: REARM_BITMAP }).catch(() => {});
        throw internal(
          `The backup bitmap ${name} could not be made again after an earlier migration: ${e instanceof Error ? e.message : String(e)}`,
        );
      }
      made.push(name);
    }
  }
  return made;
}

/**
 * How long each command of `migrateOut` waits for QEMU's answer (the QMP client's own default is
 * the vm driver's 5 s). While a migration runs, QEMU's main loop also copies RAM and serves the
 * mirror, and on a loaded host it answered `object-add` after more than 5 s
 * (bench/vm-live-migration.ts, a busy guest's shared-disk move): the move rolled back though
 * nothing was wrong. A QEMU that is really stuck still fails the command after this, and the
 * move's signal (its cancel) ends a wait at once; the roll-back's own commands wait as long, never
 * ended by the signal (a cancelled move must still be undone).
 */
export const MIGRATION_QMP_TIMEOUT_MS = 30_000;

/**
 * The destination's commands wait for QEMU as long as the source's do (MIGRATION_QMP_TIMEOUT_MS),
 * unless one says otherwise: on a loaded host the destination answered `object-add` of its prepare
 * after more than the QMP client's 5 s (bench/vm-live-migration.ts, a busy guest's local-disk move
 * back, issue 13), and the move was undone though nothing was wrong.
 */
const patient = (qmp: MigrationQmp): MigrationQmp => ({
  execute: (command, args, o) =>
    qmp.execute(command, args, { ...o, timeoutMs: o?.timeoutMs ?? MIGRATION_QMP_TIMEOUT_MS }),
});

/**
 * How long a migration may go without moving a byte before the source gives it up (decision 0042,
 * amended: a stalled migration): neither the disk's mirror (its job's offset) nor the RAM stream
 * (`ram.transferred`) moved. A destination whose host or QEMU hangs while its daemon still renews
 * its lease (it stays Online) answers nothing, and the move would wait for ever. A healthy
 * migration always moves some bytes each second: nothing here throttles it (MIGRATION_MAX_BANDWIDTH),
 * and a ready mirror that has nothing new to copy leaves the RAM moving. The guest's
 * `migration.stall_limit` sets it (seconds).
 */
export const MIGRATION_STALL_MS = 60_000;

/** RAM goes as fast as the link allows: QEMU 7.2 limits it to 32 MiB/s unless told. */
export const MIGRATION_MAX_BANDWIDTH = 10 * 2 ** 30;

/** `tcp:HOST:PORT`, an IPv6 address in brackets. */
export const tcpUri = (host: string, port: number): string =>
  `tcp:${host.includes(':') ? `[${host}]` : host}:${port}`;

/**
 * The destination's side before the source starts: exports the root disk over NBD (writable;
 * QEMU activates the node for it though the machine is incoming) and listens for RAM. With
 * `sharedDisk` (decision 0061: the source's QEMU has the same disk file open) nothing is
 * exported, and `late-block-activate` keeps the disk inactive here, its lock not taken, until
 * `cont`: the source, which inactivates it at the end of the migration, can take it back by
 * resuming if the guest is not handed over, as long as this QEMU never ran.
 */
export async function prepareIncoming(
  destination: MigrationQmp,
  endpoints: IncomingEndpoints,
  options: { tlsDir?: string; sharedDisk?: boolean } = {},
): Promise<void> {
  const qmp = patient(destination);
  if (options.tlsDir) {
    // QEMU reads the credentials when the object is made: the files may go right after.
    await qmp.execute('object-add', {
      'qom-type': 'tls-creds-x509',
      id: TLS_ID,
      dir: options.tlsDir,
      endpoint: 'server',
      'verify-peer': true,
    });
    await qmp.execute('migrate-set-parameters', { 'tls-creds': TLS_ID });
  }
  if (options.sharedDisk) {
    await qmp.execute('migrate-set-capabilities', {
      capabilities: [{ capability: 'late-block-activate', state: true }],
    });
    await qmp.execute('migrate-incoming', { uri: tcpUri(endpoints.host, endpoints.migrationPort) });
    return;
  }
  await qmp.execute('nbd-server-start', {
    addr: { type: 'inet', data: { host: endpoints.host, port: String(endpoints.nbdPort) } },
    ...(options.tlsDir && { 'tls-creds': TLS_ID }),
  });
  await qmp.execute('block-export-add', {
    type: 'nbd',
    id: EXPORT_ID,
    'node-name': 'root',
    name: EXPORT_NAME,
    writable: true,
  });
  // The disk's dirty bitmaps come with the RAM (the mirror copies content only): the backup chain
  // goes on here (decision 0062, amended 2026-12-07). Both ends must have it on.
  await qmp.execute('migrate-set-capabilities', { capabilities: DIRTY_BITMAPS });
  await qmp.execute('migrate-incoming', { uri: tcpUri(endpoints.host, endpoints.migrationPort) });
}

/** What `query-migrate` says on a destination whose incoming migration is still under way. */
const INCOMING_UNDER_WAY = new Set(['setup', 'active', 'device', 'pre-switchover']);

/** How long `finishIncoming` waits for the destination to load the end of the migration stream. */
export const INCOMING_COMPLETE_WAIT_MS = 30_000;

/**
 * The destination's side once the RAM is in and the source's mirror done: the export goes and
 * the guest runs. Refused unless the migration completed here (the machine still incoming, or
 * failed, must never run). The source says `completed` once it has sent the last of the stream;
 * the destination says so once it has loaded it, a moment later (seconds on a loaded host: seen
 * as `active` here right after the source's end, issue 13), so a migration still under way here
 * is waited for, up to `waitMs`; one that failed, or never began, is refused at once.
 */
export async function finishIncoming(
  destination: MigrationQmp,
  options: { waitMs?: number; pollMs?: number; now?: () => number } = {},
): Promise<void> {
  const qmp = patient(destination);
  const now = options.now ?? Date.now;
  const deadline = now() + (options.waitMs ?? INCOMING_COMPLETE_WAIT_MS);
  for (;;) {
    const m = await qmp.execute<{ status?: string }>('query-migrate');
    if (m.status === 'completed') break;
    if (!INCOMING_UNDER_WAY.has(m.status ?? '') || now() >= deadline) {
      throw failedPrecondition(
        `The incoming migration has not completed here (${m.status ?? 'not started'})`,
      );
    }
    await sleep(options.pollMs ?? 50);
  }
  // A move over a shared pool exported nothing (decision 0061).
  const exports = await qmp.execute<Array<{ id: string }>>('query-block-exports');
  if (exports.some((e) => e.id === EXPORT_ID)) {
    await qmp.execute('block-export-del', { id: EXPORT_ID });
    await qmp.execute('nbd-server-stop');
  }
  await qmp.execute('cont');
  // It runs here now: a failure to forget the credentials must not fail the move, whose undoing
  // would resume the source too (over a shared disk its lock, held here now, refuses that anyway).
  await dropTls(qmp).catch(() => {});
}

/**
 * Forgets a migration's TLS credentials, so that a later migration can add its own: the migration
 * parameters that name them, then the object (`added`: it was made, whether or not the parameters
 * came to name it, as when a move is cancelled during the mirror).
 */
async function dropTls(qmp: MigrationQmp, options: { added?: boolean } = {}): Promise<void> {
  const params = await qmp.execute<{ 'tls-creds'?: string }>('query-migrate-parameters');
  if (params['tls-creds']) {
    await qmp.execute('migrate-set-parameters', { 'tls-creds': '', 'tls-hostname': '' });
  } else if (!options.added) return;
  await qmp.execute('object-del', { id: TLS_ID });
}

interface BlockJob {
  device: string;
  len: number;
  offset: number;
  ready: boolean;
  status?: string;
}
/** The move's disk mirror job, if this QEMU has it. */
const mirrorJobOf = async (qmp: MigrationQmp): Promise<BlockJob | undefined> =>
  (await qmp.execute<BlockJob[]>('query-block-jobs')).find((j) => j.device === MIRROR_JOB);

interface MigrateInfo {
  status?: string;
  downtime?: number;
  'error-desc'?: string;
  ram?: { transferred: number; total: number; remaining: number };
}

/**
 * The source's side: mirror, migrate, switch over. Resolves with the source paused
 * (`postmigrate`) and the mirror gone, both disks equal; the caller then hands the guest over
 * and stops this QEMU, or, when the hand-over fails, resumes it (`resumeSource`). On failure or
 * abort before that, undoes its work (migrate_cancel, the mirror cancelled, the NBD node
 * removed) so that the guest runs on here as before, and throws.
 */
export async function migrateOut(
  source: MigrationQmp,
  options: {
    to: IncomingEndpoints;
    downtimeLimitMs: number;
    /**
     * `top`: only the source's own clusters (the destination's disk is an overlay on the same base
     * disk); `shared`: the destination opens this very disk file (a shared pool, decision 0061),
     * nothing is mirrored, only the RAM moves.
     */
    sync: 'top' | 'full' | 'shared';
    /** A directory with ca-cert.pem, client-cert.pem and client-key.pem: both streams in TLS, the destination verified. */
    tlsDir?: string;
    /** Called once QEMU has read the credentials in `tlsDir` (they may go then). */
    onTlsLoaded?: () => void;
    signal: AbortSignal;
    onProgress?: (p: MigrationProgress) => void;
    pollMs?: number;
    now?: () => number;
    /** Each command's wait for QEMU (default MIGRATION_QMP_TIMEOUT_MS). */
    qmpTimeoutMs?: number;
    /**
     * Aborts this host's TCP connections to `to`'s two ports in the kernel, whatever QEMU is doing
     * (the vm driver: `ss -K`, see `dropConnectionsArgv`). The undo runs it first, then `yank`
     * (cutDestination): a connection still being opened to a destination that hangs is QEMU's to
     * wait for (the kernel retries its SYN for about two minutes, and `migrate_cancel` waits for
     * that), and nothing in QEMU can end it.
     */
    dropConnections?: () => Promise<void>;
    /** How long the copy may move no byte before it is given up (default MIGRATION_STALL_MS). */
    stallMs?: number;
  },
): Promise<MigrationResult> {
  const pollMs = options.pollMs ?? 100;
  const now = options.now ?? Date.now;
  const { to, signal } = options;
  const waitMs = options.qmpTimeoutMs ?? MIGRATION_QMP_TIMEOUT_MS;
  /** The migration's own commands: the longer wait, ended by the move's signal. */
  const qmp: MigrationQmp = {
    execute: <T>(command: string, args?: Record<string, unknown>, o?: QmpCallOptions) =>
      source.execute<T>(command, args, { timeoutMs: o?.timeoutMs ?? waitMs, signal }),
  };
  /** The roll-back's commands: the longer wait, whatever the signal says. */
  const undo: MigrationQmp = {
    execute: <T>(command: string, args?: Record<string, unknown>, o?: QmpCallOptions) =>
      source.execute<T>(command, args, { timeoutMs: o?.timeoutMs ?? waitMs }),
  };
  const started = now();
  let progress: MigrationProgress = {
    phase: 'mirroring the disk',
    diskDoneBytes: 0,
    diskTotalBytes: 0,
    ramTransferredBytes: 0,
    ramTotalBytes: 0,
  };
  const report = (p: Partial<MigrationProgress>) => {
    progress = { ...progress, ...p };
    options.onProgress?.(progress);
  };
  let nodeAdded = false;
  let mirrorStarted = false;
  let migrating = false;
  const aborted = () => {
    if (signal.aborted) throw cancelled('The live move was cancelled');
  };
  const mirrorJob = (via: MigrationQmp = qmp) => mirrorJobOf(via);
  const stallMs = options.stallMs ?? MIGRATION_STALL_MS;
  /** The copy's bytes so far (the mirror's offset and the RAM sent), and when they last grew. */
  const moved = { disk: 0, ram: 0, bytes: 0, at: now() };
  /** A phase begins: its commands took time, none of it the destination's. */
  const phaseBegins = () => {
    moved.at = now();
  };
  /**
   * Notes the copy's figures as QEMU answered them; throws once they have not grown for `stallMs`
   * (MIGRATION_STALL_MS): judged on answers only, so a QEMU slow to answer is not taken for a
   * destination that stopped.
   */
  const progressed = (figures: { disk?: number; ram?: number }) => {
    if (figures.disk !== undefined) moved.disk = figures.disk;
    if (figures.ram !== undefined) moved.ram = figures.ram;
    const t = now();
    if (moved.disk + moved.ram > moved.bytes) {
      moved.bytes = moved.disk + moved.ram;
      moved.at = t;
    } else if (t - moved.at >= stallMs) {
      throw unavailable(
        `the migration made no progress for ${stallMs / 1000} s (the destination stopped answering)`,
      );
    }
  };
  let tls = false;
  try {
    // Each "made" mark is set before its command is sent, not after its answer: a cancel that ends
    // the wait for the answer does not stop QEMU, which runs the command anyway (a monitor runs
    // its commands in order, so the undo's removal comes after it). Set after, a node added while
    // the answer was awaited stayed in the source's QEMU and failed its next move ("Duplicate
    // nodes with node-name='migration-target'"). Removing what is not there fails, ignored.
    if (options.tlsDir) {
      tls = true;
      await qmp.execute('object-add', {
        'qom-type': 'tls-creds-x509',
        id: TLS_ID,
        dir: options.tlsDir,
        endpoint: 'client',
      });
      options.onTlsLoaded?.();
    }
    if (options.sync !== 'shared') {
      // On only when there is a bitmap to carry (hasNamedBitmaps: QEMU 7.2's sticky "none"); off
      // otherwise, also where an earlier move of this QEMU turned it on.
      const carry = await hasNamedBitmaps(qmp);
      // And carried persistent, also after an earlier migration of this QEMU (rearmBitmaps).
      if (carry) await rearmBitmaps(qmp);
      await qmp.execute('migrate-set-capabilities', { capabilities: dirtyBitmaps(carry) });
      await mirror(options.sync);
    }
    const mirrored = now();
    report({ phase: 'copying RAM' });
    await qmp.execute('migrate-set-parameters', {
      'downtime-limit': options.downtimeLimitMs,
      'max-bandwidth': MIGRATION_MAX_BANDWIDTH,
      ...(tls && { 'tls-creds': TLS_ID, 'tls-hostname': to.host }),
    });
    aborted();
    migrating = true;
    await qmp.execute('migrate', { uri: tcpUri(to.host, to.migrationPort) });
    phaseBegins();
    let info: MigrateInfo;
    for (;;) {
      aborted();
      info = await qmp.execute<MigrateInfo>('query-migrate');
      if (info.ram) {
        report({ ramTransferredBytes: info.ram.transferred, ramTotalBytes: info.ram.total });
      }
      if (info.status === 'completed') break;
      if (info.status === 'failed' || info.status === 'cancelled') {
        throw internal(`The RAM migration ${info.status}: ${info['error-desc'] ?? 'QEMU gave no reason'}`);
      }
      const ram = info.ram?.transferred ?? 0;
      // The ready mirror follows the guest's writes: asked only when the RAM did not move.
      const disk = mirrorStarted && ram <= moved.ram ? (await mirrorJob())?.offset : undefined;
      progressed({ ram, ...(disk !== undefined && { disk }) });
      await sleep(pollMs);
    }
    const switched = now();
    migrating = false;
    if (mirrorStarted) await completeMirror();
    if (tls) await dropTls(qmp, { added: true }).catch(() => {});
    return {
      downtimeMs: info.downtime ?? 0,
      totalMs: now() - started,
      mirrorMs: mirrored - started,
      ramMs: switched - mirrored,
      diskBytes: progress.diskTotalBytes,
      ramBytes: progress.ramTransferredBytes,
    };
  } catch (e) {
    // Back to where it was: the guest runs on here, nothing points at the destination. Its
    // connections are cut first: a destination that hangs (frozen or cut off, answering nothing,
    // not even a reset) holds QEMU's sends and connects, and the cancels would wait on them
    // (`dropConnections`, then cutDestination).
    if (migrating || nodeAdded) {
      await options.dropConnections?.().catch(() => {});
      await cutDestination(undo).catch(() => {});
    }
    if (migrating) await undo.execute('migrate_cancel').catch(() => {});
    if (mirrorStarted) {
      await undo.execute('block-job-cancel', { device: MIRROR_JOB, force: true }).catch(() => {});
      const deadline = now() + 30_000;
      for (;;) {
        const job = await mirrorJob(undo).catch(() => undefined);
        if (!job || now() >= deadline) break;
        if (job.status === 'concluded') {
          await undo.execute('job-dismiss', { id: MIRROR_JOB }).catch(() => {});
          break;
        }
        await sleep(Math.min(pollMs, 50));
      }
    }
    if (nodeAdded) await undo.execute('blockdev-del', { 'node-name': TARGET_NODE }).catch(() => {});
    if (tls) await dropTls(undo, { added: true }).catch(() => {});
    // Its bitmaps are busy until the migration has ended (resumeSource makes them again).
    if (migrating) {
      const deadline = now() + 30_000;
      for (;;) {
        const m = await undo.execute<MigrateInfo>('query-migrate').catch(() => undefined);
        if (!m || MIGRATION_ENDED.has(m.status) || now() >= deadline) break;
        await sleep(Math.min(pollMs, 50));
      }
    }
    await resumeSource(undo).catch(() => {});
    throw e;
  }

  /** The disk into the destination's NBD export, until the mirror is ready (it then follows every write). */
  async function mirror(sync: 'top' | 'full'): Promise<void> {
    nodeAdded = true;
    await qmp.execute('blockdev-add', {
      driver: 'nbd',
      'node-name': TARGET_NODE,
      server: { type: 'inet', host: to.host, port: String(to.nbdPort) },
      export: EXPORT_NAME,
      ...(tls && { 'tls-creds': TLS_ID }),
    });
    mirrorStarted = true;
    await qmp.execute('blockdev-mirror', {
      'job-id': MIRROR_JOB,
      device: 'root',
      target: TARGET_NODE,
      sync,
      // The job is removed only when asked: its end state stays to be read.
      'auto-dismiss': false,
    });
    phaseBegins();
    for (;;) {
      aborted();
      const job = await mirrorJob();
      if (!job) throw internal('The disk mirror stopped before it was ready');
      if (job.status === 'concluded' || job.status === 'aborting') {
        throw internal('The disk mirror failed before it was ready (see the source QEMU log)');
      }
      report({ diskDoneBytes: job.offset, diskTotalBytes: job.len });
      if (job.ready) {
        // Never given up here: ready is progress, however little there was to copy (sync=top).
        moved.disk = job.offset;
        break;
      }
      progressed({ disk: job.offset });
      await sleep(pollMs);
    }
  }

  /**
   * At switch-over, the source paused: cancelling the ready mirror copies its last writes, then
   * ends it without switching the source to the target.
   */
  async function completeMirror(): Promise<void> {
    report({ phase: 'switching over' });
    await qmp.execute('block-job-cancel', { device: MIRROR_JOB });
    const deadline = now() + 60_000;
    for (;;) {
      const job = await mirrorJob();
      if (!job) throw internal('The disk mirror vanished at switch-over');
      if (job.status === 'concluded') break;
      if (now() >= deadline) throw internal('The disk mirror did not finish within 60 s at switch-over');
      await sleep(Math.min(pollMs, 20));
    }
    // A mirror cancelled once ready ends cleanly; one that failed says so in the job list first.
    const final = (await qmp.execute<Array<BlockJob & { error?: string }>>('query-block-jobs')).find(
      (j) => j.device === MIRROR_JOB,
    );
    if (final?.error) throw internal(`The disk mirror failed at switch-over: ${final.error}`);
    await qmp.execute('job-dismiss', { id: MIRROR_JOB });
    mirrorStarted = false;
    await qmp.execute('blockdev-del', { 'node-name': TARGET_NODE }).catch(() => {});
    nodeAdded = false;
  }
}

/** A connection QEMU can cut at once (`query-yank`, QEMU 6.0 and later). */
interface YankInstance {
  type: 'block-node' | 'chardev' | 'migration';
  'node-name'?: string;
  id?: string;
}

/**
 * Cuts this QEMU's connections to a migration's destination at once, QEMU's own way (`yank`): the
 * RAM migration's (it fails) and the NBD node's (its requests fail, and the mirror job that writes
 * into it ends). A destination whose host hangs (frozen, or cut off: nothing answers, not even a
 * reset) leaves QEMU waiting on the kernel for as long as TCP retries, or for ever when the requests
 * were acknowledged before the hang and nothing is left to resend: the mirror's forced cancel then
 * waits for replies that never come, and QEMU stopped answering QMP at all, the guest's QEMU wedged
 * (seen in the cluster case, decision 0042 amended: "a hung destination"). Cut first, every later
 * step of the undo is answered at once. Only this migration's instances are cut (never a chardev:
 * the QMP socket is one), only those QEMU has now: `yank` refuses the whole list for one it does
 * not know. Answers what was cut.
 */
export async function cutDestination(qmp: MigrationQmp): Promise<string[]> {
  const registered = await qmp.execute<YankInstance[]>('query-yank');
  const ours = registered.filter(
    (i) => i.type === 'migration' || (i.type === 'block-node' && i['node-name'] === TARGET_NODE),
  );
  if (ours.length === 0) return [];
  await qmp.execute('yank', { instances: ours });
  return ours.map((i) => (i.type === 'migration' ? 'the RAM migration' : `the NBD node ${TARGET_NODE}`));
}

/** Runs the source's guest again after a migration that completed but was not handed over. */
export async function resumeSource(qmp: MigrationQmp): Promise<void> {
  const { status } = await qmp.execute<{ status: string }>('query-status');
  if (status !== 'running') await qmp.execute('cont');
  // The guest's home is this QEMU again: its backup bitmaps stored when it quits, carried persistent
  // by its next migration (rearmBitmaps; the migration has ended). One that cannot be made again
  // only makes the chain's next backup a full one (an unstored bitmap is never taken for sound).
  await rearmBitmaps(qmp).catch(() => {});
}

/** What `query-migrate` says of a migration that has ended (or never began): nothing to cancel. */
const MIGRATION_ENDED = new Set([undefined, 'none', 'completed', 'failed', 'cancelled']);

/**
 * The source's side after its daemon died during a migration, before the switch-over (decision
 * 0079): the records are still this member's, and the destination's waiting QEMU has been
 * dropped. Undoes in this QEMU what `migrateOut` added and could not undo itself, in its own
 * undo's order: its connections to the destination cut (`cutDestination`), the migration if it
 * still runs (`migrate_cancel`), the disk's mirror job (`block-job-cancel` by force, then
 * `job-dismiss`: the job holds the node), the NBD client node it mirrored into (`blockdev-del`),
 * the TLS credentials (the parameters that name them, then the object); then runs the guest again.
 * Each is looked for first by the fixed names `migrateOut` gives them, so a QEMU that has none of
 * them (QEMU ended the job itself when the export went) is only resumed. Answers what it undid;
 * throws, after resuming the guest, when something could not be undone (the QEMU then keeps it
 * until it stops, and a later live move of the guest fails in one line on the name taken).
 */
export async function recoverSource(
  qmp: MigrationQmp,
  options: { pollMs?: number; now?: () => number; waitMs?: number } = {},
): Promise<string[]> {
  const { undone, left } = await undoLeftovers(qmp, options);
  await resumeSource(qmp);
  if (left.length > 0) throw internal(`Not undone in the source's QEMU: ${left.join('; ')}`);
  return undone;
}

/**
 * What an earlier `migrateOut` left in this QEMU and could not undo itself, undone in its undo's
 * order (see `recoverSource`, which resumes the guest after it): answers what was undone, and
 * what could not be (each with its reason). The vm driver runs it before each migration too
 * (vm-live-migration.ts): a migration whose destination stopped answering (its member lost)
 * left the mirror job draining into the dead NBD connection past `migrateOut`'s undo's wait, and
 * the node it holds with it; once the connection has failed the job has ended, and the next move
 * removes both instead of failing on the name. (`migrateOut`'s undo now cuts those connections
 * first, and so does this: a job still draining ends at once.)
 */
export async function undoLeftovers(
  qmp: MigrationQmp,
  options: { pollMs?: number; now?: () => number; waitMs?: number } = {},
): Promise<{ undone: string[]; left: string[] }> {
  const pollMs = options.pollMs ?? 50;
  const now = options.now ?? Date.now;
  const waitMs = options.waitMs ?? 30_000;
  const undone: string[] = [];
  const left: string[] = [];
  const step = async (what: string, work: () => Promise<boolean>) => {
    try {
      if (await work()) undone.push(what);
    } catch (e) {
      left.push(`${what}: ${e instanceof Error ? e.message : String(e)}`);
    }
  };
  /** Polls `done` until it holds or `waitMs` passed; answers whether it held. */
  const until = async (done: () => Promise<boolean>) => {
    const deadline = now() + waitMs;
    for (;;) {
      if (await done()) return true;
      if (now() >= deadline) return false;
      await sleep(pollMs);
    }
  };
  // A destination that stopped answering holds QEMU's sends: its connections go first (cutDestination).
  // Only an aid: a cut QEMU refuses is no piece left (the steps after it say what is).
  await step(
    "the destination's connections cut",
    async () => (await cutDestination(qmp).catch(() => [])).length > 0,
  );
  await step('the RAM migration cancelled', async () => {
    const ended = async () => MIGRATION_ENDED.has((await qmp.execute<MigrateInfo>('query-migrate')).status);
    if (await ended()) return false;
    await qmp.execute('migrate_cancel');
    if (!(await until(ended))) throw internal(`it did not end within ${waitMs / 1000} s`);
    return true;
  });
  await step(`the mirror job ${MIRROR_JOB} cancelled`, async () => {
    const job = () => mirrorJobOf(qmp);
    const found = await job();
    if (!found) return false;
    if (found.status !== 'concluded') {
      // Refused if the job concluded in between (its connection was just cut): then nothing to cancel.
      await qmp.execute('block-job-cancel', { device: MIRROR_JOB, force: true }).catch(async (e: unknown) => {
        const j = await job();
        if (j && j.status !== 'concluded') throw e;
      });
      const ended = await until(async () => {
        const j = await job();
        return !j || j.status === 'concluded';
      });
      if (!ended) throw internal(`it did not end within ${waitMs / 1000} s`);
    }
    if (await job()) await qmp.execute('job-dismiss', { id: MIRROR_JOB });
    return true;
  });
  await step(`the NBD node ${TARGET_NODE} removed`, async () => {
    const nodes = await qmp.execute<Array<{ 'node-name': string }>>('query-named-block-nodes', {
      flat: true,
    });
    if (!nodes.some((n) => n['node-name'] === TARGET_NODE)) return false;
    await qmp.execute('blockdev-del', { 'node-name': TARGET_NODE });
    return true;
  });
  // Credentials that a migration or an NBD node left behind may still use stay with it.
  if (left.length === 0) {
    await step('the TLS credentials dropped', async () => {
      const params = await qmp.execute<{ 'tls-creds'?: string }>('query-migrate-parameters');
      const named = Boolean(params['tls-creds']);
      if (named) await qmp.execute('migrate-set-parameters', { 'tls-creds': '', 'tls-hostname': '' });
      const objects = await qmp.execute<Array<{ name: string }>>('qom-list', { path: '/objects' });
      if (!objects.some((o) => o.name === TLS_ID)) return named;
      await qmp.execute('object-del', { id: TLS_ID });
      return true;
    });
  }
  return { undone, left };
}
