import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import { mkdir, mkdtemp, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { aGuestSpec, aGuestStatus } from '../../test/fakes/guest-records.ts';
import type { Operation } from '../core/types.ts';
import type { BackupChainLink } from '../drivers/guest-storage.ts';
import { silentLogger } from '../host/logger.ts';
import { ArchiveWriter } from '../storage/backup-archive.ts';
import { parseShippedName } from '../storage/shipped-backups.ts';
import type { KvEngine } from '../store/kv-engine.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { records } from '../store/records.ts';
import { createBackupRecovery } from './backup-recovery.ts';
import { createEventBus } from './event-bus.ts';
import { createOperationService } from './operation-service.ts';
import type { OperationService } from './types.ts';

/** A real backup archive of `guest` at `path`, as the link its name says; `damaged`: its payload is not what the manifest says. */
async function writeArchive(path: string, guest: string, options: { damaged?: boolean } = {}): Promise<void> {
  const link: BackupChainLink | undefined = parseShippedName(path.slice(path.lastIndexOf('/') + 1))?.link;
  const payload = Buffer.from(`disk of ${guest} ${path}`);
  const sha256 = createHash('sha256').update(payload).digest('hex');
  const w = await ArchiveWriter.create(path);
  await w.addBuffer(
    'rootfs.tar.zst',
    options.damaged ? Buffer.from(payload.toString().toUpperCase()) : payload,
  );
  const manifest = {
    format: 'trivisor-backup/1',
    createdAt: '2026-12-04T03:00:00Z',
    guest: { name: guest, model: 'ct', config: {}, createdAt: '2026-12-01T00:00:00Z' },
    image: { fingerprint: 'f', alias: 'busybox', description: '' },
    snapshots: [],
    ...(link && { incremental: link }),
    files: { 'rootfs.tar.zst': { sha256, sizeBytes: payload.length } },
  };
  await w.addBuffer('manifest.json', Buffer.from(JSON.stringify(manifest)));
  await w.finish();
}

const CHAIN = '3f9a1c2b4d5e6f70';

describe('recovery from the backup directory (fake members, real directory)', () => {
  let store: KvEngine;
  let operations: OperationService;
  let work: string;
  let dir: string;
  let calls: string[];
  let controller: NodeJS.Timeout;

  const done = (op: Operation) => operations.wait(op.id);
  const noop = () =>
    operations.start({ project: 'default', description: 'fake', resources: {}, run: async () => undefined });
  const recovery = () =>
    createBackupRecovery({
      store,
      hostName: 'm1',
      operations,
      members: async () => [
        { name: 'm1', status: 'Online' },
        { name: 'm2', status: 'Online' },
        { name: 'm3', status: 'Offline' },
        { name: 'm4', status: 'Evacuated' },
      ],
      guests: {
        async placementFor() {
          return { member: 'm2' };
        },
        async changeState(name, request) {
          calls.push(`${request.action} ${name}`);
          return noop();
        },
      },
      storage: {
        async importBackup(request) {
          calls.push(`import ${(await readdir(work)).length > 0 ? 'copy' : 'none'}`);
          await rm(request.archivePath);
          return noop();
        },
      },
      transport: {
        async send(member, guest, archivePath) {
          calls.push(`send ${guest} to ${member}: ${archivePath.slice(dir.length)}`);
        },
      },
      receiver: {
        async receive() {
          calls.push('receive here');
        },
      },
      workDir: join(work, 'imports'),
      log: silentLogger(),
      convergeMs: 5000,
    });

  beforeEach(async () => {
    store = createMemoryStore();
    operations = createOperationService(createEventBus());
    work = await mkdtemp(join(tmpdir(), 'backup-recovery-'));
    dir = join(work, 'shipped');
    calls = [];
    for (const [guest, files] of [
      ['alive', ['20261204T030000Z.tar']],
      ['lost', ['20261203T030000Z.tar', '20261204T030000Z.tar', 'notes.txt']],
      ['fresh', ['20261204T030000Z.tar']],
      ['held', ['20261204T030000Z.tar']],
      ['empty', ['readme']],
      ['Not_A_Name', ['20261204T030000Z.tar']],
    ] as const) {
      await mkdir(join(dir, guest), { recursive: true });
      for (const f of files) {
        if (f.endsWith('.tar')) await writeArchive(join(dir, guest, f), guest);
        else await writeFile(join(dir, guest, f), `${guest}/${f}`);
      }
    }
    await records.guest.at('alive').put(store, aGuestSpec({ name: 'alive', location: 'm2' }));
    await records.guest
      .at('lost')
      .put(store, aGuestSpec({ name: 'lost', location: 'm3', desired: 'Running' }));
    await records.guestLocation.at('lost').put(store, 'm3');
    await records.guestStatus.at('lost').put(store, aGuestStatus({ status: 'Running' }));
    await records.snapshot.at('lost', 's1').put(store, {
      name: 's1',
      guest: 'lost',
      createdAt: new Date().toISOString(),
      wasRunning: true,
      location: 'm3',
    });
    await records.guest.at('held').put(store, aGuestSpec({ name: 'held', location: 'm4' }));
    // The destination's controller: makes the files of a guest given to it.
    controller = setInterval(async () => {
      const spec = await records.guest.at('lost').get(store);
      const status = await records.guestStatus.at('lost').get(store);
      if (spec?.value.location === 'm2' && !status) {
        await records.guestStatus
          .at('lost')
          .put(
            store,
            aGuestStatus({ status: 'Stopped', provisioned: true, observedGeneration: spec.value.generation }),
          );
      }
    }, 20);
  });
  afterEach(async () => {
    clearInterval(controller);
    await rm(work, { recursive: true, force: true });
  });

  test("a lost member's guest goes to the placed member with its latest archive, its snapshots' records dropped, and runs again; an unknown one is imported here; the others are left", async () => {
    const op = await done(await recovery().recover(dir));
    assert.equal(op.status, 'Success', JSON.stringify(op));
    assert.deepEqual(op.metadata, {
      recovered: [
        {
          name: 'fresh',
          member: 'm1',
          backup: '20261204T030000Z.tar',
          links: ['20261204T030000Z.tar'],
          problems: [],
        },
        {
          name: 'lost',
          member: 'm2',
          backup: '20261204T030000Z.tar',
          links: ['20261204T030000Z.tar'],
          problems: [],
        },
      ],
      skipped: [
        { name: 'alive', reason: 'it is on member m2, which has it' },
        { name: 'held', reason: 'its member m4 is Evacuated, not lost' },
      ],
    });
    assert.deepEqual(calls, ['import copy', 'send lost to m2: /lost/20261204T030000Z.tar', 'start lost']);
    const lost = await records.guest.at('lost').get(store);
    assert.equal(lost?.value.location, 'm2');
    assert.equal(
      await records.guestLocation
        .at('lost')
        .get(store)
        .then((r) => r?.value),
      'm2',
    );
    assert.equal((await records.snapshot.list(store, 'lost')).items.length, 0);
    // The directory is read, never changed.
    assert.deepEqual((await readdir(join(dir, 'lost'))).sort(), [
      '20261203T030000Z.tar',
      '20261204T030000Z.tar',
      'notes.txt',
    ]);
  });

  test('a guest changed meanwhile is not taken from its member: reported, the others recovered', async () => {
    const r = recovery();
    // The lost member's guest is given to m1 by someone else between the read and the hand-over.
    const ref = records.guestLocation.at('lost');
    const original = store.txn.bind(store);
    let once = false;
    store.txn = async (request) => {
      if (!once && request.compare.some((c) => c.key === ref.key)) {
        once = true;
        await ref.put(store, 'm1');
      }
      return original(request);
    };
    const op = await done(await r.recover(dir));
    const meta = op.metadata as {
      recovered: Array<{ name: string }>;
      skipped: Array<{ name: string; reason: string }>;
    };
    assert.deepEqual(
      meta.recovered.map((g) => g.name),
      ['fresh'],
    );
    assert.match(
      meta.skipped.find((g) => g.name === 'lost')?.reason ?? '',
      /was changed while it was being recovered/,
    );
    assert.equal((await records.guest.at('lost').get(store))?.value.location, 'm3');
  });

  test("a chain's full and its incrementals are applied in order; a missing link is named and the links before it are used", async () => {
    await rm(join(dir, 'lost'), { recursive: true });
    await mkdir(join(dir, 'lost'));
    const lostLinks = [
      `20261203T030000Z-full-${CHAIN}.tar`,
      `20261203T031000Z-incr-${CHAIN}-1.tar`,
      `20261203T032000Z-incr-${CHAIN}-2.tar`,
      // Link 3 was lost: 4 cannot be applied.
      `20261203T034000Z-incr-${CHAIN}-4.tar`,
    ];
    for (const f of lostLinks) await writeArchive(join(dir, 'lost', f), 'lost');
    const op = await done(await recovery().recover(dir));
    const meta = op.metadata as { recovered: Array<{ name: string; links: string[]; problems: string[] }> };
    const lost = meta.recovered.find((g) => g.name === 'lost');
    assert.deepEqual(lost?.links, lostLinks.slice(0, 3));
    assert.deepEqual(lost?.problems, [
      `Link 3 of chain ${CHAIN} is missing: the chain ends at 20261203T032000Z-incr-${CHAIN}-2.tar`,
    ]);
    assert.deepEqual(
      calls.filter((c) => c.startsWith('send')),
      [...lostLinks.slice(0, 3).map((f) => `send lost to m2: /lost/${f}`)],
    );
    assert.equal(calls.at(-1), 'start lost');
  });

  test('a damaged link counts as missing; a chain without a usable full falls back to the chain before', async () => {
    await rm(join(dir, 'fresh'), { recursive: true });
    await mkdir(join(dir, 'fresh'));
    const older = '20261202T030000Z.tar';
    const full = `20261203T030000Z-full-${CHAIN}.tar`;
    const inc = `20261203T031000Z-incr-${CHAIN}-1.tar`;
    await writeArchive(join(dir, 'fresh', older), 'fresh');
    await writeArchive(join(dir, 'fresh', full), 'fresh');
    await writeArchive(join(dir, 'fresh', inc), 'fresh', { damaged: true });
    let op = await done(await recovery().recover(dir));
    type Meta = { recovered: Array<{ name: string; links: string[]; problems: string[] }> };
    let fresh = (op.metadata as Meta).recovered.find((g) => g.name === 'fresh');
    assert.deepEqual(fresh?.links, [full]);
    assert.deepEqual(fresh?.problems, [
      `Backup ${inc} cannot be used: rootfs.tar.zst does not match its checksum`,
    ]);
    assert.deepEqual(
      calls.filter((c) => c.startsWith('import')),
      ['import copy'],
    );
    // The full damaged too: the whole archive before it.
    await writeArchive(join(dir, 'fresh', `20261203T030500Z-full-${CHAIN.replace('3', '4')}.tar`), 'other');
    await rm(join(dir, 'fresh', full));
    await writeArchive(join(dir, 'fresh', full), 'fresh', { damaged: true });
    calls = [];
    op = await done(await recovery().recover(dir));
    fresh = (op.metadata as Meta).recovered.find((g) => g.name === 'fresh');
    assert.deepEqual(fresh?.links, [older]);
    assert.deepEqual(fresh?.problems, [
      `Backup ${full} cannot be used: rootfs.tar.zst does not match its checksum`,
      `Backup 20261203T030500Z-full-${CHAIN.replace('3', '4')}.tar cannot be used: it is a backup of guest other`,
      `The full backup of chain ${CHAIN} is missing: ${inc} cannot be restored`,
    ]);
  });

  test('a directory that is not one, or not absolute, is refused at once', async () => {
    await assert.rejects(recovery().recover('relative/dir'), /must be an absolute path on host m1/);
    await assert.rejects(recovery().recover(join(work, 'nope')), /is not a directory on host m1/);
  });
});
