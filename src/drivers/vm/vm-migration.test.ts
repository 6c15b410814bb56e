import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isTrivisorError, unavailable } from '../../core/errors.ts';
import { dropConnectionsArgv, migrationFilter } from './vm-live-migration.ts';
import {
  finishIncoming,
  MIGRATION_QMP_TIMEOUT_MS,
  type MigrationQmp,
  migrateOut,
  prepareIncoming,
  rearmBitmaps,
  recoverSource,
  resumeSource,
  tcpUri,
  undoLeftovers,
} from './vm-migration.ts';

interface Call {
  command: string;
  args?: Record<string, unknown>;
}

/**
 * A QEMU over QMP reduced to what a migration asks: the mirror job becomes ready after
 * `readyAfter` polls, the migration completes after `completeAfter` polls (or fails), the job
 * concludes once cancelled. Every command is recorded.
 */
function fakeQemu(
  options: {
    readyAfter?: number;
    completeAfter?: number;
    migration?: 'completes' | 'fails';
    onPoll?: (what: 'mirror' | 'migrate', n: number) => void;
    /** Named dirty bitmaps on node `root` (backup bitmaps). */
    bitmaps?: string[];
    /** The mirror job's offset at its `n`th poll (default: 0, then 4096 once ready). */
    offsetAt?: (n: number) => number;
    /** `ram.transferred` at the migration's `n`th poll while active (default 500). */
    ramAt?: (n: number) => number;
  } = {},
) {
  const calls: Call[] = [];
  let job: { status: string; ready: boolean; offset: number } | undefined;
  let jobPolls = 0;
  let migratePolls = 0;
  let migrating = false;
  let node = false;
  let running = true;
  const qmp: MigrationQmp = {
    async execute<T>(command: string, args?: Record<string, unknown>): Promise<T> {
      calls.push(args ? { command, args } : { command });
      const answer = (value: unknown) => value as T;
      switch (command) {
        case 'blockdev-add':
          node = true;
          return answer({});
        case 'blockdev-del':
          node = false;
          return answer({});
        // What QEMU can cut: its QMP socket (a chardev) always, the migration and the NBD node while there.
        case 'query-yank':
          return answer([
            { type: 'chardev', id: 'qmp' },
            ...(migrating ? [{ type: 'migration' }] : []),
            ...(node ? [{ type: 'block-node', 'node-name': 'migration-target' }] : []),
          ]);
        case 'blockdev-mirror':
          job = { status: 'running', ready: false, offset: 0 };
          return answer({});
        case 'query-named-block-nodes':
          return answer([
            { 'node-name': 'root', 'dirty-bitmaps': (options.bitmaps ?? []).map((name) => ({ name })) },
            { 'node-name': '#block123', 'dirty-bitmaps': [] },
          ]);
        case 'query-block-jobs': {
          if (!job) return answer([]);
          jobPolls++;
          options.onPoll?.('mirror', jobPolls);
          if (job.status === 'running' && jobPolls >= (options.readyAfter ?? 2)) {
            job.ready = true;
            job.offset = 4096;
          }
          if (options.offsetAt) job.offset = options.offsetAt(jobPolls);
          return answer([
            {
              device: 'migration-mirror',
              len: 4096,
              offset: job.offset,
              ready: job.ready,
              status: job.status,
            },
          ]);
        }
        case 'block-job-cancel':
          if (job) job.status = 'concluded';
          return answer({});
        case 'job-dismiss':
          job = undefined;
          return answer({});
        case 'migrate':
          migrating = true;
          return answer({});
        case 'query-migrate': {
          if (!migrating) return answer({});
          migratePolls++;
          options.onPoll?.('migrate', migratePolls);
          if (migratePolls >= (options.completeAfter ?? 2)) {
            if (options.migration === 'fails') {
              return answer({
                status: 'failed',
                'error-desc': 'Unable to write to socket: Connection reset',
              });
            }
            running = false;
            return answer({
              status: 'completed',
              downtime: 42,
              ram: { transferred: 1000, total: 2000, remaining: 0 },
            });
          }
          const transferred = options.ramAt?.(migratePolls) ?? 500;
          return answer({
            status: 'active',
            ram: { transferred, total: 2000, remaining: Math.max(0, 2000 - transferred) },
          });
        }
        case 'migrate_cancel':
          migrating = false;
          return answer({});
        // A cut fails the migration, and the mirror's writes into the node: QEMU ends its job.
        case 'yank':
          for (const i of (args?.instances ?? []) as Array<{ type: string }>) {
            if (i.type === 'migration') migrating = false;
            if (i.type === 'block-node' && job) job.status = 'concluded';
          }
          return answer({});
        case 'query-status':
          return answer({ status: running ? 'running' : 'postmigrate' });
        case 'cont':
          running = true;
          return answer({});
        default:
          return answer({});
      }
    },
  };
  return { qmp, calls, names: () => calls.map((c) => c.command).filter((c) => !c.startsWith('query-')) };
}

const to = { host: '198.18.5.12', nbdPort: 40001, migrationPort: 40002 };

describe('vm live migration over QMP', () => {
  test('the destination exports its root disk writable over NBD on its cluster address, then listens for RAM', async () => {
    const { qmp, calls } = fakeQemu();
    await prepareIncoming(qmp, to);
    assert.deepEqual(calls, [
      {
        command: 'nbd-server-start',
        args: { addr: { type: 'inet', data: { host: '198.18.5.12', port: '40001' } } },
      },
      {
        command: 'block-export-add',
        args: { type: 'nbd', id: 'migration-export', 'node-name': 'root', name: 'root', writable: true },
      },
      // The disk's dirty bitmaps (the backup chain's) come with the RAM (decision 0062, amended).
      {
        command: 'migrate-set-capabilities',
        args: { capabilities: [{ capability: 'dirty-bitmaps', state: true }] },
      },
      { command: 'migrate-incoming', args: { uri: 'tcp:198.18.5.12:40002' } },
    ]);
    assert.equal(tcpUri('fd00::1', 5), 'tcp:[fd00::1]:5');
  });

  test('the source mirrors until ready, then migrates RAM with the downtime limit, then cancels the ready mirror at switch-over', async () => {
    const { qmp, calls, names } = fakeQemu({ readyAfter: 3, completeAfter: 3 });
    const phases: string[] = [];
    const result = await migrateOut(qmp, {
      to,
      downtimeLimitMs: 250,
      sync: 'top',
      signal: new AbortController().signal,
      pollMs: 1,
      onProgress: (p) => {
        if (phases.at(-1) !== p.phase) phases.push(p.phase);
      },
    });
    assert.deepEqual(names(), [
      'migrate-set-capabilities',
      'blockdev-add',
      'blockdev-mirror',
      'migrate-set-parameters',
      'migrate',
      'block-job-cancel',
      'job-dismiss',
      'blockdev-del',
    ]);
    const args = (name: string) => calls.find((c) => c.command === name)?.args;
    assert.deepEqual(args('blockdev-add'), {
      driver: 'nbd',
      'node-name': 'migration-target',
      server: { type: 'inet', host: '198.18.5.12', port: '40001' },
      export: 'root',
    });
    assert.equal(args('blockdev-mirror')?.sync, 'top');
    assert.equal(args('blockdev-mirror')?.device, 'root');
    assert.equal(args('migrate-set-parameters')?.['downtime-limit'], 250);
    assert.deepEqual(args('migrate'), { uri: 'tcp:198.18.5.12:40002' });
    // Cancelled once ready (no force): QEMU copies the last writes and does not pivot.
    assert.deepEqual(args('block-job-cancel'), { device: 'migration-mirror' });
    assert.deepEqual(phases, ['mirroring the disk', 'copying RAM', 'switching over']);
    assert.equal(result.downtimeMs, 42);
    assert.equal(result.ramBytes, 1000);
    assert.equal(result.diskBytes, 4096);
    assert.ok(!names().includes('cont'), 'the source stays paused for the hand-over');
  });

  test('with TLS: both ends load their credentials first, the export and the RAM stream use them, the source checks the address it connects to, and the credentials are forgotten at the end', async () => {
    const dest = fakeQemu();
    await prepareIncoming(dest.qmp, to, { tlsDir: '/tmp/d' });
    assert.deepEqual(dest.calls.slice(0, 3), [
      {
        command: 'object-add',
        args: {
          'qom-type': 'tls-creds-x509',
          id: 'migration-tls',
          dir: '/tmp/d',
          endpoint: 'server',
          'verify-peer': true,
        },
      },
      { command: 'migrate-set-parameters', args: { 'tls-creds': 'migration-tls' } },
      {
        command: 'nbd-server-start',
        args: {
          addr: { type: 'inet', data: { host: '198.18.5.12', port: '40001' } },
          'tls-creds': 'migration-tls',
        },
      },
    ]);
    const source = fakeQemu();
    let loaded = 0;
    const parameters = source.qmp.execute;
    // The fake's parameters: TLS set once migrate-set-parameters named it.
    let creds = '';
    source.qmp.execute = async <T>(command: string, args?: Record<string, unknown>) => {
      if (command === 'query-migrate-parameters') return { 'tls-creds': creds } as T;
      if (command === 'migrate-set-parameters' && typeof args?.['tls-creds'] === 'string')
        creds = args['tls-creds'] as string;
      return parameters<T>(command, args);
    };
    await migrateOut(source.qmp, {
      to,
      downtimeLimitMs: 300,
      sync: 'top',
      tlsDir: '/tmp/s',
      onTlsLoaded: () => loaded++,
      signal: new AbortController().signal,
      pollMs: 1,
    });
    assert.equal(loaded, 1);
    const args = (name: string) => source.calls.find((c) => c.command === name)?.args;
    assert.equal(args('object-add')?.endpoint, 'client');
    assert.equal(args('blockdev-add')?.['tls-creds'], 'migration-tls');
    assert.equal(args('migrate-set-parameters')?.['tls-creds'], 'migration-tls');
    assert.equal(args('migrate-set-parameters')?.['tls-hostname'], '198.18.5.12');
    assert.deepEqual(source.names().slice(-2), ['migrate-set-parameters', 'object-del']);
  });

  test('the source turns dirty-bitmaps migration on only when a node has a named bitmap to carry (QEMU 7.2 never carries one after a migration with none)', async () => {
    const capability = async (bitmaps: string[]) => {
      const { qmp, calls } = fakeQemu({ bitmaps });
      await migrateOut(qmp, {
        to,
        downtimeLimitMs: 250,
        sync: 'top',
        signal: new AbortController().signal,
        pollMs: 1,
      });
      return calls.filter((c) => c.command === 'migrate-set-capabilities').map((c) => c.args);
    };
    assert.deepEqual(await capability([]), [
      { capabilities: [{ capability: 'dirty-bitmaps', state: false }] },
    ]);
    assert.deepEqual(await capability(['trivisor-backup-0123456789abcdef-3']), [
      { capabilities: [{ capability: 'dirty-bitmaps', state: true }] },
    ]);
  });

  test('a cancel while the RAM is copied: migrate_cancel, the mirror cancelled by force, the NBD node removed, and the guest runs on', async () => {
    const abort = new AbortController();
    const { qmp, names } = fakeQemu({
      completeAfter: 100,
      onPoll: (what, n) => {
        if (what === 'migrate' && n === 2) abort.abort();
      },
    });
    await assert.rejects(
      migrateOut(qmp, { to, downtimeLimitMs: 300, sync: 'top', signal: abort.signal, pollMs: 1 }),
      (e: unknown) => isTrivisorError(e) && e.code === 'Cancelled',
    );
    assert.deepEqual(names(), [
      'migrate-set-capabilities',
      'blockdev-add',
      'blockdev-mirror',
      'migrate-set-parameters',
      'migrate',
      'yank',
      'migrate_cancel',
      'block-job-cancel',
      'job-dismiss',
      'blockdev-del',
    ]);
  });

  test('a destination that hangs while the RAM is copied (nothing answers, not even a reset): the undo cuts its connections first (yank of the migration and the NBD node only), so the cancels are answered and nothing of the migration stays', async () => {
    const abort = new AbortController();
    const fake = fakeQemu({
      completeAfter: 100,
      onPoll: (what, n) => {
        if (what === 'migrate' && n === 2) abort.abort();
      },
    });
    // Until its connections are cut, QEMU's sends wait on a peer that never answers: migrate_cancel
    // is not answered within the wait, the forced cancel leaves the job draining, and the node it
    // holds cannot go.
    let cut = false;
    let draining = false;
    const hung: MigrationQmp = {
      async execute<T>(command: string, args?: Record<string, unknown>): Promise<T> {
        if (command === 'yank') cut = true;
        if (abort.signal.aborted && !cut) {
          if (command === 'migrate_cancel') {
            fake.calls.push({ command });
            throw unavailable(`QEMU did not answer migrate_cancel within ${MIGRATION_QMP_TIMEOUT_MS}ms.`);
          }
          if (command === 'block-job-cancel') {
            fake.calls.push({ command });
            draining = true;
            return {} as T;
          }
          if (command === 'query-block-jobs' && draining) {
            return [
              { device: 'migration-mirror', len: 4096, offset: 4096, ready: true, status: 'aborting' },
            ] as T;
          }
          if (command === 'blockdev-del') {
            fake.calls.push({ command });
            throw new Error(
              "QEMU refused blockdev-del: Node 'migration-target' is busy: block device is in use by block job: mirror",
            );
          }
        }
        return fake.qmp.execute<T>(command, args);
      },
    };
    let t = 0;
    await assert.rejects(
      migrateOut(hung, {
        to,
        downtimeLimitMs: 300,
        sync: 'top',
        signal: abort.signal,
        pollMs: 1,
        now: () => (t += 1000),
        // The kernel's end of the connections goes first (it needs nothing of QEMU).
        dropConnections: async () => {
          fake.calls.push({ command: '(ss -K)' });
        },
      }),
      (e: unknown) => isTrivisorError(e) && e.code === 'Cancelled',
    );
    assert.deepEqual(fake.names(), [
      'migrate-set-capabilities',
      'blockdev-add',
      'blockdev-mirror',
      'migrate-set-parameters',
      'migrate',
      '(ss -K)',
      'yank',
      'migrate_cancel',
      'block-job-cancel',
      'job-dismiss',
      'blockdev-del',
    ]);
    assert.deepEqual(fake.calls.find((c) => c.command === 'yank')?.args, {
      instances: [{ type: 'migration' }, { type: 'block-node', 'node-name': 'migration-target' }],
    });
    assert.deepEqual(await fake.qmp.execute('query-block-jobs'), [], 'no mirror job left');
    assert.deepEqual(
      await fake.qmp.execute('query-yank'),
      [{ type: 'chardev', id: 'qmp' }],
      'no node, no migration',
    );
  });

  describe('a migration that stops making progress (decision 0042, amended: a stalled migration)', () => {
    /**
     * A fake QEMU on a fake clock: each poll of the copy's figures is a second later (the mirror's
     * only until the RAM migration polls: then the migration's poll is the second, and a look at
     * the mirror within it takes no time).
     */
    const clocked = (options: Parameters<typeof fakeQemu>[0]) => {
      let clock = 0;
      const polls = { mirror: 0, migrate: 0 };
      const fake = fakeQemu({
        ...options,
        onPoll: (what, n) => {
          polls[what] = n;
          if (what === 'migrate' || polls.migrate === 0) clock += 1000;
        },
      });
      /** The polls made when the undo began (its connections cut). */
      const atCut = { mirror: 0, migrate: 0 };
      return { ...fake, polls, atCut, now: () => clock };
    };
    /** A migration to the fake, its connections' abort recorded as `(ss -K)`. */
    const run = (fake: ReturnType<typeof clocked>, stallMs?: number) =>
      migrateOut(fake.qmp, {
        to,
        downtimeLimitMs: 300,
        sync: 'top',
        signal: new AbortController().signal,
        pollMs: 0,
        now: fake.now,
        ...(stallMs !== undefined && { stallMs }),
        dropConnections: async () => {
          Object.assign(fake.atCut, fake.polls);
          fake.calls.push({ command: '(ss -K)' });
        },
      });
    const stalled = (seconds: number) => (e: unknown) =>
      isTrivisorError(e) &&
      e.code === 'Unavailable' &&
      e.message === `the migration made no progress for ${seconds} s (the destination stopped answering)`;

    test('the RAM stops moving, the mirror ready and idle: given up once nothing moved for the limit (60 s unless set), and undone as a cancel is, its connections cut first', async () => {
      for (const [stallMs, seconds] of [
        [10_000, 10],
        [undefined, 60],
      ] as const) {
        // RAM moves for 3 s, then nothing: the mirror is ready, its offset stays where it was.
        const fake = clocked({ readyAfter: 1, completeAfter: 10_000, ramAt: (n) => Math.min(n, 3) * 100 });
        await assert.rejects(run(fake, stallMs), stalled(seconds));
        // Given up at the first poll that found it still for the whole limit, not one before.
        assert.equal(fake.atCut.migrate, 3 + seconds);
        assert.deepEqual(fake.names(), [
          'migrate-set-capabilities',
          'blockdev-add',
          'blockdev-mirror',
          'migrate-set-parameters',
          'migrate',
          '(ss -K)',
          'yank',
          'migrate_cancel',
          'block-job-cancel',
          'job-dismiss',
          'blockdev-del',
        ]);
        assert.deepEqual(await fake.qmp.execute('query-block-jobs'), [], 'no mirror job left');
        assert.deepEqual(await fake.qmp.execute('query-yank'), [{ type: 'chardev', id: 'qmp' }]);
        assert.deepEqual(await fake.qmp.execute('query-status'), { status: 'running' });
      }
    });

    test('the mirror stops copying before it is ready: given up after the limit, the RAM migration never started', async () => {
      const fake = clocked({ readyAfter: 10_000, offsetAt: (n) => Math.min(n, 2) * 512 });
      await assert.rejects(run(fake, 10_000), stalled(10));
      assert.equal(fake.atCut.mirror, 2 + 10);
      assert.deepEqual(fake.names(), [
        'migrate-set-capabilities',
        'blockdev-add',
        'blockdev-mirror',
        '(ss -K)',
        'yank',
        'block-job-cancel',
        'job-dismiss',
        'blockdev-del',
      ]);
    });

    test('a copy that moves slowly but steadily (a few bytes every 9 s, against a limit of 10 s) runs to its end, for far longer than the limit', async () => {
      const fake = clocked({
        readyAfter: 40,
        offsetAt: (n) => Math.floor(n / 9) * 512,
        completeAfter: 100,
        ramAt: (n) => Math.floor(n / 9) * 100,
      });
      const result = await run(fake, 10_000);
      assert.equal(result.downtimeMs, 42);
      assert.ok(fake.now() >= 140_000, String(fake.now()));
      assert.equal(fake.names().at(-3), 'block-job-cancel', 'switched over');
    });

    test("a mirror in its ready phase (nothing new to copy) while the RAM moves is not given up, nor the RAM held while the mirror still copies the guest's writes", async () => {
      const idleDisk = clocked({
        readyAfter: 1,
        offsetAt: () => 4096,
        completeAfter: 100,
        ramAt: (n) => n * 100,
      });
      await run(idleDisk, 10_000);
      const during = idleDisk.calls.slice(
        idleDisk.calls.findIndex((c) => c.command === 'migrate'),
        idleDisk.calls.findIndex((c) => c.command === 'block-job-cancel'),
      );
      assert.equal(during.filter((c) => c.command === 'query-migrate').length, 100);
      // The RAM moved at each poll: the mirror was not asked.
      assert.equal(during.filter((c) => c.command === 'query-block-jobs').length, 0);
      const heldRam = clocked({
        readyAfter: 1,
        offsetAt: (n) => n * 512,
        completeAfter: 100,
        ramAt: () => 500,
      });
      await run(heldRam, 10_000);
      assert.ok(heldRam.now() >= 100_000, String(heldRam.now()));
    });
  });

  for (const [command, undoneBy] of [
    ['object-add', 'object-del'],
    ['blockdev-add', 'blockdev-del'],
    ['blockdev-mirror', 'block-job-cancel'],
  ] as const) {
    test(`a cancel while QEMU runs ${command} (its answer not awaited) still undoes it with ${undoneBy}: the command was sent`, async () => {
      const abort = new AbortController();
      const { qmp, names } = fakeQemu({ readyAfter: 100 });
      // The QMP client's wait ends at the cancel, but QEMU received the command and runs it.
      const cancelledInFlight: MigrationQmp = {
        async execute<T>(c: string, args?: Record<string, unknown>): Promise<T> {
          const answer = await qmp.execute<T>(c, args);
          if (c === command) {
            abort.abort();
            throw new Error(`QMP ${c}: the wait was aborted`);
          }
          return answer;
        },
      };
      await assert.rejects(
        migrateOut(cancelledInFlight, {
          to,
          downtimeLimitMs: 300,
          sync: 'top',
          tlsDir: '/tmp/s',
          signal: abort.signal,
          pollMs: 1,
        }),
        /the wait was aborted/,
      );
      assert.ok(names().includes(undoneBy), names().join(' '));
      assert.ok(!names().includes('migrate'), 'no RAM migration started');
    });
  }

  test('a cancel while the disk is mirrored never starts the RAM migration', async () => {
    const abort = new AbortController();
    const { qmp, names } = fakeQemu({
      readyAfter: 100,
      onPoll: (what, n) => {
        if (what === 'mirror' && n === 2) abort.abort();
      },
    });
    await assert.rejects(
      migrateOut(qmp, { to, downtimeLimitMs: 300, sync: 'full', signal: abort.signal, pollMs: 1 }),
      (e: unknown) => isTrivisorError(e) && e.code === 'Cancelled',
    );
    assert.deepEqual(names(), [
      'migrate-set-capabilities',
      'blockdev-add',
      'blockdev-mirror',
      'yank',
      'block-job-cancel',
      'job-dismiss',
      'blockdev-del',
    ]);
  });

  test('with TLS, a cancel during the mirror removes the credentials too, though no migration parameter names them yet', async () => {
    const abort = new AbortController();
    const { qmp, names } = fakeQemu({
      readyAfter: 100,
      onPoll: (what, n) => {
        if (what === 'mirror' && n === 2) abort.abort();
      },
    });
    await assert.rejects(
      migrateOut(qmp, {
        to,
        downtimeLimitMs: 300,
        sync: 'top',
        tlsDir: '/tmp/s',
        signal: abort.signal,
        pollMs: 1,
      }),
      (e: unknown) => isTrivisorError(e) && e.code === 'Cancelled',
    );
    assert.deepEqual(names(), [
      'object-add',
      'migrate-set-capabilities',
      'blockdev-add',
      'blockdev-mirror',
      'yank',
      'block-job-cancel',
      'job-dismiss',
      'blockdev-del',
      'object-del',
    ]);
  });

  test('a RAM migration that fails says why, and undoes the mirror', async () => {
    const { qmp, names } = fakeQemu({ migration: 'fails' });
    await assert.rejects(
      migrateOut(qmp, {
        to,
        downtimeLimitMs: 300,
        sync: 'top',
        signal: new AbortController().signal,
        pollMs: 1,
      }),
      /The RAM migration failed: Unable to write to socket: Connection reset/,
    );
    assert.ok(names().includes('block-job-cancel'));
    assert.equal(names().at(-1), 'blockdev-del');
  });

  test('the destination runs only once its incoming migration completed, its export gone first', async () => {
    const incoming: Call[] = [];
    let status = 'active';
    const qmp: MigrationQmp = {
      async execute<T>(command: string, args?: Record<string, unknown>): Promise<T> {
        incoming.push(args ? { command, args } : { command });
        if (command === 'query-block-exports') return [{ id: 'migration-export' }] as T;
        return (command === 'query-migrate' ? { status } : {}) as T;
      },
    };
    // Still under way after the wait: refused, nothing run (a fake clock: each look is 1 s later).
    let clock = 0;
    const later = { waitMs: 3000, pollMs: 1, now: () => (clock += 1000) };
    await assert.rejects(
      finishIncoming(qmp, later),
      /The incoming migration has not completed here \(active\)/,
    );
    assert.ok(incoming.length > 1, 'it waited');
    assert.ok(
      incoming.every((c) => c.command === 'query-migrate'),
      JSON.stringify(incoming),
    );
    // Failed here, or never begun: refused at the first look, however long it may wait.
    for (const ended of ['failed', 'cancelled', 'none']) {
      status = ended;
      incoming.length = 0;
      await assert.rejects(
        finishIncoming(qmp, { waitMs: 60_000, pollMs: 1 }),
        new RegExp(`has not completed here \\(${ended}\\)`),
      );
      assert.deepEqual(
        incoming.map((c) => c.command),
        ['query-migrate'],
      );
    }
    // The source has sent the end of the stream, this QEMU still loads it (issue 13: seen right
    // after a busy guest's move): waited for, then run.
    status = 'active';
    incoming.length = 0;
    let looks = 0;
    const loading: MigrationQmp = {
      execute: <T>(command: string, args?: Record<string, unknown>) => {
        if (command === 'query-migrate' && ++looks === 3) status = 'completed';
        return qmp.execute<T>(command, args);
      },
    };
    await finishIncoming(loading, { pollMs: 1 });
    assert.deepEqual(
      incoming.map((c) => c.command),
      [
        'query-migrate',
        'query-migrate',
        'query-migrate',
        'query-block-exports',
        'block-export-del',
        'nbd-server-stop',
        'cont',
        'query-migrate-parameters',
      ],
    );
  });

  test('over a shared disk (decision 0061) nothing is exported or mirrored: the destination keeps the disk inactive until cont, the source moves only the RAM', async () => {
    const dest = fakeQemu();
    await prepareIncoming(dest.qmp, { ...to, nbdPort: 0 }, { sharedDisk: true });
    assert.deepEqual(dest.calls, [
      {
        command: 'migrate-set-capabilities',
        args: { capabilities: [{ capability: 'late-block-activate', state: true }] },
      },
      { command: 'migrate-incoming', args: { uri: 'tcp:198.18.5.12:40002' } },
    ]);

    const { qmp, names } = fakeQemu({ completeAfter: 3 });
    const phases: string[] = [];
    const result = await migrateOut(qmp, {
      to: { ...to, nbdPort: 0 },
      downtimeLimitMs: 300,
      sync: 'shared',
      signal: new AbortController().signal,
      pollMs: 1,
      onProgress: (p) => {
        if (phases.at(-1) !== p.phase) phases.push(p.phase);
      },
    });
    assert.deepEqual(names(), ['migrate-set-parameters', 'migrate']);
    assert.deepEqual(phases, ['copying RAM']);
    assert.equal(result.downtimeMs, 42);
    assert.equal(result.diskBytes, 0);

    // Its finish finds no export to remove.
    const incoming: string[] = [];
    const done: MigrationQmp = {
      async execute<T>(command: string): Promise<T> {
        incoming.push(command);
        if (command === 'query-block-exports') return [] as T;
        return (command === 'query-migrate' ? { status: 'completed' } : {}) as T;
      },
    };
    await finishIncoming(done);
    assert.deepEqual(incoming, ['query-migrate', 'query-block-exports', 'cont', 'query-migrate-parameters']);
  });

  test("the destination's commands wait for QEMU as long as the source's (30 s), not the QMP client's 5 s", async () => {
    // A loaded host answered a destination's object-add after more than 5 s (issue 13's bench).
    const waits: Array<[string, number | undefined]> = [];
    const qmp: MigrationQmp = {
      async execute<T>(
        command: string,
        _args?: Record<string, unknown>,
        o?: { timeoutMs?: number },
      ): Promise<T> {
        waits.push([command, o?.timeoutMs]);
        if (command === 'query-block-exports') return [] as T;
        return (command === 'query-migrate' ? { status: 'completed' } : {}) as T;
      },
    };
    await prepareIncoming(qmp, to, { tlsDir: '/tmp/tls' });
    await prepareIncoming(qmp, { ...to, nbdPort: 0 }, { tlsDir: '/tmp/tls', sharedDisk: true });
    await finishIncoming(qmp);
    assert.ok(waits.length >= 12, String(waits.length));
    for (const [command, ms] of waits) assert.equal(ms, MIGRATION_QMP_TIMEOUT_MS, command);
  });

  test('a RAM-only migration that is cancelled resumes the source, with nothing of a mirror to undo', async () => {
    const controller = new AbortController();
    const { qmp, names } = fakeQemu({
      completeAfter: 100,
      onPoll: (what, n) => {
        if (what === 'migrate' && n === 2) controller.abort();
      },
    });
    await assert.rejects(
      migrateOut(qmp, {
        to: { ...to, nbdPort: 0 },
        downtimeLimitMs: 300,
        sync: 'shared',
        signal: controller.signal,
        pollMs: 1,
      }),
      (e: unknown) => isTrivisorError(e) && e.code === 'Cancelled',
    );
    assert.deepEqual(names(), ['migrate-set-parameters', 'migrate', 'yank', 'migrate_cancel']);
  });

  test('a connection still being opened cannot be cut by QEMU (its SYN unanswered): the undo aborts it in the kernel first, and a failing abort does not stop the undo', async () => {
    const abort = new AbortController();
    const { qmp, names } = fakeQemu({
      readyAfter: 100,
      onPoll: (what, n) => {
        if (what === 'mirror' && n === 2) abort.abort();
      },
    });
    await assert.rejects(
      migrateOut(qmp, {
        to,
        downtimeLimitMs: 300,
        sync: 'top',
        signal: abort.signal,
        pollMs: 1,
        dropConnections: async () => {
          throw new Error('ss failed (exit 1): SOCK_DESTROY answers: Operation not supported');
        },
      }),
      (e: unknown) => isTrivisorError(e) && e.code === 'Cancelled',
    );
    assert.deepEqual(names().slice(3), ['yank', 'block-job-cancel', 'job-dismiss', 'blockdev-del']);
    // Only the destination's two ports of its address; an IPv6 address in brackets; no NBD port over a shared pool.
    assert.deepEqual(dropConnectionsArgv(to), [
      ...['ss', '-tnK', 'dst', '198.18.5.12', '(', 'dport', '=', ':40001'],
      ...['or', 'dport', '=', ':40002', ')'],
    ]);
    assert.deepEqual(dropConnectionsArgv({ host: 'fd42::12', nbdPort: 0, migrationPort: 40002 }), [
      ...['ss', '-tnK', 'dst', '[fd42::12]', '(', 'dport', '=', ':40002', ')'],
    ]);
  });

  test("while a destination listens, only the source member's address reaches its two ports", () => {
    assert.equal(
      migrationFilter('web', { from: '198.18.5.11', ports: [40001, 40002] }),
      [
        'add table inet trivisor-migration-web',
        'delete table inet trivisor-migration-web',
        'table inet trivisor-migration-web {',
        '  chain input {',
        '    type filter hook input priority filter - 1; policy accept;',
        '    tcp dport { 40001, 40002 } ip saddr != 198.18.5.11 drop',
        '    tcp dport { 40001, 40002 } meta nfproto != ipv4 drop',
        '  }',
        '}',
        '',
      ].join('\n'),
    );
    assert.match(migrationFilter('web', { from: 'fd00::11', ports: [1, 2] }), /ip6 saddr != fd00::11 drop/);
  });

  describe("the source's backup bitmaps made again after a migration (QEMU 7.2 leaves them marked not to be stored; decision 0062, amended)", () => {
    /** A QEMU whose node `root` has these bitmaps and whose last migration says `status`. */
    const withBitmaps = (
      status: string | undefined,
      bitmaps: Array<{ name: string; persistent: boolean; recording?: boolean }>,
      refuse?: (actions: Array<{ type: string; data: Record<string, unknown> }>) => boolean,
    ) => {
      const calls: Call[] = [];
      const qmp: MigrationQmp = {
        async execute<T>(command: string, args?: Record<string, unknown>): Promise<T> {
          calls.push(args ? { command, args } : { command });
          if (command === 'query-migrate') return (status ? { status } : {}) as T;
          if (command === 'query-status') return { status: 'paused' } as T;
          if (command === 'query-named-block-nodes') {
            return [
              {
                'node-name': 'root',
                'dirty-bitmaps': bitmaps.map((b) => ({ granularity: 65536, recording: true, ...b })),
              },
              { 'node-name': 'file' },
            ] as T;
          }
          if (command === 'transaction' && refuse?.(args?.actions as never)) {
            throw new Error('QEMU refused transaction: Bitmap with the same name is already stored');
          }
          return {} as T;
        },
      };
      return { qmp, calls, changes: () => calls.filter((c) => !c.command.startsWith('query-')) };
    };
    const b = (type: string, data: Record<string, unknown>) => ({ type, data: { node: 'root', ...data } });

    test('a QEMU that never migrated is left as it is', async () => {
      for (const status of [undefined, 'none']) {
        const q = withBitmaps(status, [{ name: 'trivisor-backup-c-0', persistent: true }]);
        assert.deepEqual(await rearmBitmaps(q.qmp), []);
        assert.deepEqual(q.changes(), []);
      }
    });

    test('after a migration each persistent bitmap is made again under its name, with its granularity and recording state, its bits kept in a recording bitmap of their own meanwhile; one that is not persistent is left', async () => {
      const q = withBitmaps('cancelled', [
        { name: 'trivisor-backup-c-0', persistent: true },
        { name: 'kept-off', persistent: true, recording: false },
        { name: 'scratch', persistent: false },
      ]);
      assert.deepEqual(await rearmBitmaps(q.qmp), ['trivisor-backup-c-0', 'kept-off']);
      const again = (name: string, extra: Record<string, unknown> = {}) => [
        {
          command: 'transaction',
          args: {
            actions: [
              b('block-dirty-bitmap-add', { name: 'migration-rearm', granularity: 65536 }),
              b('block-dirty-bitmap-merge', { target: 'migration-rearm', bitmaps: [name] }),
            ],
          },
        },
        { command: 'transaction', args: { actions: [b('block-dirty-bitmap-remove', { name })] } },
        {
          command: 'transaction',
          args: {
            actions: [
              b('block-dirty-bitmap-add', { name, granularity: 65536, persistent: true, ...extra }),
              b('block-dirty-bitmap-merge', { target: name, bitmaps: ['migration-rearm'] }),
              b('block-dirty-bitmap-remove', { name: 'migration-rearm' }),
            ],
          },
        },
      ];
      assert.deepEqual(q.changes(), [
        ...again('trivisor-backup-c-0'),
        ...again('kept-off', { disabled: true }),
      ]);
    });

    test('a bitmap QEMU will not add again: its waiting bits go, and the failure names it', async () => {
      const q = withBitmaps('completed', [{ name: 'trivisor-backup-c-0', persistent: true }], (actions) =>
        actions.some((a) => a.type === 'block-dirty-bitmap-add' && a.data.name === 'trivisor-backup-c-0'),
      );
      await assert.rejects(
        rearmBitmaps(q.qmp),
        /The backup bitmap trivisor-backup-c-0 could not be made again after an earlier migration: .*already stored/,
      );
      assert.deepEqual(q.changes().at(-1), {
        command: 'block-dirty-bitmap-remove',
        args: { node: 'root', name: 'migration-rearm' },
      });
      // Resuming the guest does not fail on it (its next backup is a full one).
      await resumeSource(q.qmp);
      assert.ok(q.changes().some((c) => c.command === 'cont'));
    });

    test("a cancelled migration's undo waits for the migration to end, then resumes the guest and makes its bitmaps again", async () => {
      const abort = new AbortController();
      const fake = fakeQemu({
        completeAfter: 100,
        onPoll: (what, n) => {
          if (what === 'migrate' && n === 2) abort.abort();
        },
      });
      // The migration goes on `cancelling` for two looks after its cancel; the bitmap is persistent.
      let cancelling = 0;
      const qmp: MigrationQmp = {
        async execute<T>(command: string, args?: Record<string, unknown>): Promise<T> {
          if (command === 'migrate_cancel') cancelling = 2;
          if (command === 'query-migrate' && abort.signal.aborted) {
            fake.calls.push({ command });
            return { status: cancelling-- > 0 ? 'cancelling' : 'cancelled' } as T;
          }
          if (command === 'query-named-block-nodes') {
            fake.calls.push({ command });
            const bitmaps = [
              { name: 'trivisor-backup-c-0', granularity: 65536, recording: true, persistent: true },
            ];
            return [{ 'node-name': 'root', 'dirty-bitmaps': bitmaps }] as T;
          }
          return fake.qmp.execute<T>(command, args);
        },
      };
      await assert.rejects(
        migrateOut(qmp, { to, downtimeLimitMs: 300, sync: 'top', signal: abort.signal, pollMs: 1 }),
        (e: unknown) => isTrivisorError(e) && e.code === 'Cancelled',
      );
      const after = fake.calls.slice(fake.calls.findIndex((c) => c.command === 'migrate_cancel'));
      const lastLook = after.findLastIndex((c) => c.command === 'query-migrate');
      const firstChange = after.findIndex((c) => c.command === 'transaction');
      assert.ok(lastLook >= 0 && firstChange > lastLook, after.map((c) => c.command).join(' '));
      assert.equal(after.filter((c) => c.command === 'query-migrate').length, 4, 'looked until cancelled');
      assert.equal(after.filter((c) => c.command === 'transaction').length, 3);
    });
  });

  describe('a source QEMU left by a daemon that died during its migration (decision 0079)', () => {
    /**
     * A source QEMU as a dead daemon's migrateOut left it: `left` says what is still there. The job
     * goes `aborting` for one poll after a forced cancel, then `concluded`; the migration
     * `cancelling` for one poll after migrate_cancel, then `cancelled`. Every command is recorded,
     * and a command in `refuse` fails as QEMU would.
     */
    function leftQemu(left: {
      migration?: string;
      job?: string;
      node?: boolean;
      tlsNamed?: boolean;
      tlsObject?: boolean;
      status?: string;
      refuse?: string[];
      /**
       * The migration's connections still open, so QEMU lists them to cut (`query-yank`): a cut
       * fails the migration and ends the mirror job (its writes fail). Otherwise only the QMP
       * socket is listed, as when the destination's end closed them already.
       */
      open?: boolean;
    }) {
      const calls: Call[] = [];
      let { migration, job, node, tlsNamed, tlsObject } = left;
      let status = left.status ?? 'running';
      const qmp: MigrationQmp = {
        async execute<T>(command: string, args?: Record<string, unknown>): Promise<T> {
          calls.push(args ? { command, args } : { command });
          if (left.refuse?.includes(command)) throw new Error(`QEMU refused ${command}`);
          const answer = (value: unknown) => value as T;
          switch (command) {
            case 'query-yank':
              return answer([
                { type: 'chardev', id: 'qmp' },
                ...(left.open && migration === 'active' ? [{ type: 'migration' }] : []),
                ...(left.open && node ? [{ type: 'block-node', 'node-name': 'migration-target' }] : []),
              ]);
            case 'yank':
              for (const i of (args?.instances ?? []) as Array<{ type: string }>) {
                if (i.type === 'migration') migration = 'failed';
                if (i.type === 'block-node' && job) job = 'concluded';
              }
              return answer({});
            case 'query-migrate':
              if (migration === 'cancelling') {
                migration = 'cancelled';
                return answer({ status: 'cancelling' });
              }
              return answer(migration ? { status: migration } : {});
            case 'migrate_cancel':
              migration = 'cancelling';
              return answer({});
            case 'query-block-jobs': {
              const now = job;
              if (job === 'aborting') job = 'concluded';
              return answer(
                now ? [{ device: 'migration-mirror', len: 8, offset: 4, ready: true, status: now }] : [],
              );
            }
            case 'block-job-cancel':
              assert.notEqual(job, undefined, 'a job is cancelled only if there is one');
              job = 'aborting';
              return answer({});
            case 'job-dismiss':
              assert.equal(job, 'concluded', 'only a concluded job is dismissed');
              job = undefined;
              return answer({});
            case 'query-named-block-nodes':
              return answer([
                { 'node-name': 'root' },
                ...(node ? [{ 'node-name': 'migration-target' }] : []),
              ]);
            case 'blockdev-del':
              assert.equal(job, undefined, 'the node goes once no job holds it');
              node = false;
              return answer({});
            case 'query-migrate-parameters':
              return answer({ 'tls-creds': tlsNamed ? 'migration-tls' : '' });
            case 'migrate-set-parameters':
              tlsNamed = false;
              return answer({});
            case 'qom-list':
              return answer([
                { name: 'type', type: 'string' },
                ...(tlsObject ? [{ name: 'migration-tls', type: 'child<tls-creds-x509>' }] : []),
              ]);
            case 'object-del':
              assert.equal(node, false, 'the credentials go once the node that uses them is gone');
              tlsObject = false;
              return answer({});
            case 'query-status':
              return answer({ status });
            case 'cont':
              status = 'running';
              return answer({});
            default:
              throw new Error(`unexpected ${command}`);
          }
        },
      };
      const sent = () => calls.filter((c) => !c.command.startsWith('query-') && c.command !== 'qom-list');
      return { qmp, calls, sent, state: () => ({ migration, job, node, tlsNamed, tlsObject, status }) };
    }

    test('died while the RAM was copied: the migration is cancelled, then the mirror job (by force, then dismissed), then its NBD node, then the credentials; the guest runs on', async () => {
      const q = leftQemu({ migration: 'active', job: 'ready', node: true, tlsNamed: true, tlsObject: true });
      const undone = await recoverSource(q.qmp, { pollMs: 1 });
      assert.deepEqual(q.sent(), [
        { command: 'migrate_cancel' },
        { command: 'block-job-cancel', args: { device: 'migration-mirror', force: true } },
        { command: 'job-dismiss', args: { id: 'migration-mirror' } },
        { command: 'blockdev-del', args: { 'node-name': 'migration-target' } },
        { command: 'migrate-set-parameters', args: { 'tls-creds': '', 'tls-hostname': '' } },
        { command: 'object-del', args: { id: 'migration-tls' } },
      ]);
      assert.deepEqual(undone, [
        'the RAM migration cancelled',
        'the mirror job migration-mirror cancelled',
        'the NBD node migration-target removed',
        'the TLS credentials dropped',
      ]);
      assert.deepEqual(q.state(), {
        migration: 'cancelled',
        job: undefined,
        node: false,
        tlsNamed: false,
        tlsObject: false,
        status: 'running',
      });
    });

    test('died at switch-over (the RAM in, the source paused, the mirror still ready): no migration to cancel; the job and node go, then the guest is resumed', async () => {
      const q = leftQemu({ migration: 'completed', job: 'ready', node: true, status: 'postmigrate' });
      await recoverSource(q.qmp, { pollMs: 1 });
      assert.deepEqual(
        q.sent().map((c) => c.command),
        ['block-job-cancel', 'job-dismiss', 'blockdev-del', 'cont'],
      );
    });

    test('died during the mirror, whose job QEMU ended itself when the export went: the concluded job is only dismissed (a cancel would be refused); the node still goes', async () => {
      const q = leftQemu({ job: 'concluded', node: true, tlsObject: true });
      await recoverSource(q.qmp, { pollMs: 1 });
      assert.deepEqual(
        q.sent().map((c) => c.command),
        ['job-dismiss', 'blockdev-del', 'object-del'],
      );
    });

    test('a QEMU with nothing of a migration left is asked, not changed', async () => {
      const q = leftQemu({});
      assert.deepEqual(await recoverSource(q.qmp, { pollMs: 1 }), []);
      assert.deepEqual(q.sent(), []);
    });

    test('a step QEMU refuses is named in one error, the guest resumed; the credentials the node still uses stay with it', async () => {
      const q = leftQemu({
        job: 'ready',
        node: true,
        tlsObject: true,
        status: 'postmigrate',
        refuse: ['blockdev-del'],
      });
      await assert.rejects(
        recoverSource(q.qmp, { pollMs: 1 }),
        /^TrivisorError\(Internal\): Not undone in the source's QEMU: the NBD node migration-target removed: QEMU refused blockdev-del$/,
      );
      assert.deepEqual(
        q.sent().map((c) => c.command),
        ['block-job-cancel', 'job-dismiss', 'blockdev-del', 'cont'],
      );
    });

    test("before a new migration (undoLeftovers): an earlier one's concluded job, its node and credentials go, the guest's state untouched; a job still draining into a dead destination is reported left, never resumed", async () => {
      // The earlier move's undo gave up while the job drained into a destination that stopped
      // answering; its connection has failed since, so QEMU concluded the job.
      const q = leftQemu({ migration: 'cancelled', job: 'concluded', node: true, tlsObject: true });
      assert.deepEqual(await undoLeftovers(q.qmp, { pollMs: 1 }), {
        undone: [
          'the mirror job migration-mirror cancelled',
          'the NBD node migration-target removed',
          'the TLS credentials dropped',
        ],
        left: [],
      });
      assert.deepEqual(
        q.sent().map((c) => c.command),
        ['job-dismiss', 'blockdev-del', 'object-del'],
      );
      const paused = leftQemu({ status: 'paused' });
      assert.deepEqual(await undoLeftovers(paused.qmp, { pollMs: 1 }), { undone: [], left: [] });
      assert.deepEqual(paused.sent(), [], 'not resumed: a paused guest stays paused');
      const draining = leftQemu({ job: 'ready', node: true });
      let t = 0;
      const stuck: MigrationQmp = {
        execute: async <T>(command: string, args?: Record<string, unknown>) =>
          command === 'query-block-jobs'
            ? ([{ device: 'migration-mirror', len: 8, offset: 4, ready: true, status: 'aborting' }] as T)
            : draining.qmp.execute<T>(command, args),
      };
      const r = await undoLeftovers(stuck, { pollMs: 1, waitMs: 50, now: () => (t += 10) });
      // (The node it holds is tried too, and QEMU refuses it while the job holds it.)
      assert.equal(r.left[0], 'the mirror job migration-mirror cancelled: it did not end within 0.05 s');
      assert.ok(!draining.sent().some((c) => c.command === 'cont'));
    });

    test('a destination that hangs (its connections open, nothing answering): they are cut first (yank of the migration and the NBD node only), which fails the migration and ends the draining job; the job and node then go, the guest runs on', async () => {
      const q = leftQemu({ migration: 'active', job: 'ready', node: true, tlsNamed: true, open: true });
      // Until the cut, the job drains into a destination that never answers: it does not end.
      const hung: MigrationQmp = {
        execute: async <T>(command: string, args?: Record<string, unknown>) => {
          if (command === 'block-job-cancel' && !q.sent().some((c) => c.command === 'yank')) {
            throw new Error('hung: no cut came first');
          }
          return q.qmp.execute<T>(command, args);
        },
      };
      assert.deepEqual(await recoverSource(hung, { pollMs: 1 }), [
        "the destination's connections cut",
        'the mirror job migration-mirror cancelled',
        'the NBD node migration-target removed',
        'the TLS credentials dropped',
      ]);
      assert.deepEqual(q.sent()[0], {
        command: 'yank',
        args: { instances: [{ type: 'migration' }, { type: 'block-node', 'node-name': 'migration-target' }] },
      });
      assert.deepEqual(
        q.sent().map((c) => c.command),
        ['yank', 'job-dismiss', 'blockdev-del', 'migrate-set-parameters'],
      );
      assert.equal(q.state().migration, 'failed');
      assert.equal(q.state().status, 'running');
      // Nothing of this migration's open: nothing is cut (a yank of an instance QEMU lacks is refused whole).
      const closed = leftQemu({ job: 'concluded', node: true });
      await undoLeftovers(closed.qmp, { pollMs: 1 });
      assert.ok(!closed.sent().some((c) => c.command === 'yank'), closed.sent().join(' '));
    });

    test('a job that concludes between its listing and its cancel (its connection just cut) is dismissed, not reported left', async () => {
      const q = leftQemu({ job: 'ready', node: true });
      const racing: MigrationQmp = {
        execute: async <T>(command: string, args?: Record<string, unknown>) => {
          if (command === 'block-job-cancel') {
            // QEMU concluded it meanwhile: a cancel of a concluded job is refused.
            await q.qmp.execute('yank', {
              instances: [{ type: 'block-node', 'node-name': 'migration-target' }],
            });
            throw new Error(
              "QEMU refused block-job-cancel: Job 'migration-mirror' in state 'concluded' cannot accept command verb 'cancel'",
            );
          }
          return q.qmp.execute<T>(command, args);
        },
      };
      assert.deepEqual(await undoLeftovers(racing, { pollMs: 1 }), {
        undone: ['the mirror job migration-mirror cancelled', 'the NBD node migration-target removed'],
        left: [],
      });
    });

    test('a job that does not end within the wait is named, and the node it holds is left', async () => {
      const q = leftQemu({ job: 'ready', node: true });
      let t = 0;
      const stuck: MigrationQmp = {
        execute: async <T>(command: string, args?: Record<string, unknown>) =>
          command === 'query-block-jobs'
            ? ([{ device: 'migration-mirror', len: 8, offset: 4, ready: true, status: 'aborting' }] as T)
            : q.qmp.execute<T>(command, args),
      };
      await assert.rejects(
        recoverSource(stuck, { pollMs: 1, waitMs: 50, now: () => (t += 10) }),
        /the mirror job migration-mirror cancelled: it did not end within 0\.05 s/,
      );
      assert.ok(!q.sent().some((c) => c.command === 'job-dismiss'));
    });
  });
});
