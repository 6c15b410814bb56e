import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, rm, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import { unavailable } from '../core/errors.ts';
import { keys } from '../core/keys.ts';
import { silentLogger } from '../host/logger.ts';
import type { KvEngine } from '../store/kv-engine.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { STAGED_MAX_AGE_MS, stagedPartName, sweepMoveImports } from './move-imports.ts';
import type { MoveMark } from './move-marks.ts';

describe("sweeping what moves left in imports/ (the destination's side)", () => {
  let store: KvEngine;
  let dir: string;
  let uploads: string;
  let busy: Set<string>;
  const now = Date.parse('2026-12-06T12:00:00Z');

  const mark = (guest: string, more: Partial<MoveMark> = {}): MoveMark => ({
    guest,
    from: 'h1',
    to: 'h2',
    reason: 'migration',
    startedAt: new Date(now - 60_000).toISOString(),
    kind: 'live',
    phase: 'started',
    ...more,
  });
  /** A staged part of guest `guest`, last written `ageMs` before `now`. */
  const part = async (guest: string, ageMs = 1_000) => {
    const path = join(dir, stagedPartName(guest));
    await writeFile(path, 'part');
    const at = (now - ageMs) / 1000;
    await utimes(path, at, at);
  };
  const sweep = (over: { store?: KvEngine } = {}) =>
    sweepMoveImports(
      {
        store: over.store ?? store,
        hostName: 'h2',
        dir,
        busy: (g) => busy.has(g),
        log: silentLogger(),
        now: () => now,
      },
      { uploadDir: uploads },
    );
  const left = async () => (await readdir(dir)).sort();

  beforeEach(async () => {
    store = createMemoryStore();
    dir = await mkdtemp(join(tmpdir(), 'trivisor-move-imports-'));
    uploads = await mkdtemp(join(tmpdir(), 'trivisor-move-uploads-'));
    busy = new Set();
  });
  afterEach(async () => {
    await store.close();
    await rm(dir, { recursive: true, force: true });
    await rm(uploads, { recursive: true, force: true });
  });

  test("a staged part is kept while a live move of its guest to this member is journaled at 'started' and younger than the bound; removed otherwise", async () => {
    for (const [guest, m] of [
      ['waiting', mark('waiting')],
      ['handed', mark('handed', { phase: 'handed-over' })],
      ['rolled', mark('rolled', { phase: 'rolled-back' })],
      ['elsewhere', mark('elsewhere', { to: 'h3' })],
      ['cold', mark('cold', { kind: 'archive' })],
      ['old', mark('old')],
    ] as const) {
      await store.put(keys.guestMove(guest), JSON.stringify(m));
      await part(guest, guest === 'old' ? STAGED_MAX_AGE_MS + 1_000 : 1_000);
    }
    await part('unmarked');
    const { removed } = await sweep();
    assert.deepEqual(await left(), [stagedPartName('waiting')]);
    assert.deepEqual(removed.map((r) => `${r.name}: ${r.why}`).sort(), [
      'move-snapshots-cold.tar: no live move of guest cold to h2 is journaled',
      'move-snapshots-elsewhere.tar: no live move of guest elsewhere to h2 is journaled',
      'move-snapshots-handed.tar: no live move of guest handed to h2 is journaled',
      "move-snapshots-old.tar: it waited 601 s for its move's prepare",
      'move-snapshots-rolled.tar: no live move of guest rolled to h2 is journaled',
      'move-snapshots-unmarked.tar: no live move of guest unmarked to h2 is journaled',
    ]);
    // The move's prepare takes its part; nothing is left to sweep.
    await rm(join(dir, stagedPartName('waiting')));
    assert.deepEqual((await sweep()).removed, []);
  });

  test("a guest this member receives or prepares now keeps its part and its work directories, whatever the marks say; the work directories of one it does not are removed; other sweeps' files are left", async () => {
    await part('busy');
    await part('idle');
    for (const d of ['.move-busy-a1b2c3', '.move-idle-d4e5f6', '.move-web-2-x9y8z7']) {
      await mkdir(join(dir, d));
      await writeFile(join(dir, d, 'payload.fifo'), '');
    }
    const others = ['.tmp-123', 'live-web-0a1b2c3d.tar', '.recover-web-1700000000000.tar', 'notes'];
    for (const f of others) await writeFile(join(dir, f), '');
    busy.add('busy');
    await sweep();
    assert.deepEqual(await left(), [...others, '.move-busy-a1b2c3', stagedPartName('busy')].sort());
    busy.delete('busy');
    await sweep();
    assert.deepEqual(await left(), [...others].sort());
  });

  test("a store that does not answer leaves the age alone to judge by; the start's sweep drops the uploads of moved guests' archives and nothing else there", async () => {
    await part('young');
    await part('stale', STAGED_MAX_AGE_MS + 5_000);
    await writeFile(join(uploads, 'trivisor-move-0123456789abcdef.tar'), 'half');
    await writeFile(join(uploads, 'trivisor-upload-0123456789abcdef.tar'), 'image');
    const deaf = new Proxy(store, {
      get(t, p, r) {
        if (p === 'list') return async () => Promise.reject(unavailable('The store did not answer in time'));
        const v = Reflect.get(t, p, r) as unknown;
        return typeof v === 'function' ? (v as (...a: unknown[]) => unknown).bind(t) : v;
      },
    });
    await sweep({ store: deaf });
    assert.deepEqual(await left(), [stagedPartName('young')]);
    assert.deepEqual(await readdir(uploads), ['trivisor-upload-0123456789abcdef.tar']);
  });
});
