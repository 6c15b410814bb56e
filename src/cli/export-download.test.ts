import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm } from 'node:fs/promises';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import { FOLLOW_CONTENT_TYPE, FRAME, frame } from '../api/follow-frames.ts';
import type { Operation } from '../api/types.ts';
import { createClient } from '../client/client.ts';
import { downloadWhileExporting } from './export-download.ts';

const op = (status: Operation['status'], error: string | null = null): Operation =>
  ({
    id: 'op1',
    project: 'default',
    description: 'Backing up guest g',
    status,
    createdAt: '2026-12-07T00:00:00.000Z',
    updatedAt: '2026-12-07T00:00:00.000Z',
    progress: null,
    progressText: null,
    resources: {},
    metadata: status === 'Failure' ? { errorCode: 'Internal' } : {},
    mayCancel: status === 'Running',
    error,
  }) as Operation;

const json = (res: ServerResponse, metadata: unknown) => {
  res.writeHead(200, { 'content-type': 'application/json' });
  res.end(JSON.stringify({ type: 'sync', status: 'Success', status_code: 200, metadata }));
};

/**
 * The CLI's export download against a real HTTP server on a unix socket that plays the daemon: the
 * operation's wait answers as each case says, and the followed download sends what each case
 * says, in the orderings a daemon produced or could produce (issue 20).
 */
describe('downloadWhileExporting', () => {
  let dir: string;
  let server: Server;
  let socketPath: string;
  let scene: {
    wait: () => Operation;
    follow: (res: ServerResponse) => void;
  };
  const asked: string[] = [];

  before(async () => {
    dir = await mkdtemp(join(tmpdir(), 'trivisor-export-download-'));
    socketPath = join(dir, 'daemon.sock');
    server = createServer((req: IncomingMessage, res: ServerResponse) => {
      asked.push(`${req.method} ${req.url}`);
      if (req.url?.includes('/export?follow=true')) {
        res.writeHead(200, { 'content-type': FOLLOW_CONTENT_TYPE });
        scene.follow(res);
      } else if (req.url?.startsWith('/1.0/operations/op1/wait')) json(res, scene.wait());
      else if (req.method === 'DELETE' && req.url === '/1.0/operations/op1') json(res, op('Running'));
      else {
        res.writeHead(404);
        res.end();
      }
    });
    await new Promise<void>((r) => server.listen(socketPath, r));
  });
  beforeEach(() => {
    asked.length = 0;
  });
  after(async () => {
    // A held download's connection included.
    server.closeAllConnections();
    await new Promise((r) => server.close(r));
    await rm(dir, { recursive: true, force: true });
  });

  const run = (silentMs: number, file: string) =>
    downloadWhileExporting(createClient({ socketPath }), op('Running'), {
      guest: 'g',
      backup: 'backup-0123456789abcdef',
      file: join(dir, file),
      silentMs,
    });

  test('a download the daemon never ends after the export succeeded is stopped, leaving no file', {
    timeout: 20_000,
  }, async () => {
    // The whole archive's bytes come, then neither the end frame nor the end of the body.
    scene = {
      wait: () => op('Success'),
      follow: (res) => res.write(frame(FRAME.data, 0, Buffer.from('archive'))),
    };
    const t0 = Date.now();
    await assert.rejects(run(300, 'a.tar'), {
      message:
        'The download of backup backup-0123456789abcdef stopped: nothing came for 0.3 s after the export ended',
    });
    assert.ok(Date.now() - t0 < 5000, `stopped after ${Date.now() - t0} ms`);
    assert.deepEqual((await readdir(dir)).sort(), ['daemon.sock']);
  });

  test("an export that failed while its download hears nothing fails with the export's error, leaving no file", {
    timeout: 20_000,
  }, async () => {
    // The daemon's follower of an export that failed before its archive was begun sent nothing.
    scene = { wait: () => op('Failure', 'Cannot back up guest g: its image is gone'), follow: () => {} };
    await assert.rejects(run(300, 'b.tar'), { message: 'Cannot back up guest g: its image is gone' });
    assert.deepEqual((await readdir(dir)).sort(), ['daemon.sock']);
  });

  test('a download still receiving after its export ended is not stopped, however long it takes', {
    timeout: 20_000,
  }, async () => {
    // The export has ended at once; the archive then comes in 12 pieces 100 ms apart (1.2 s in
    // all, four times the silence allowed), its end frame last.
    const pieces = Array.from({ length: 12 }, (_, i) => Buffer.from(`piece ${String(i).padStart(2, '0')};`));
    scene = {
      wait: () => op('Success'),
      follow: (res) => {
        let i = 0;
        let at = 0;
        const next = () => {
          const piece = pieces[i++];
          if (!piece) {
            res.end(frame(FRAME.end, at));
            return;
          }
          res.write(frame(FRAME.data, at, piece));
          at += piece.length;
          setTimeout(next, 100);
        };
        next();
      },
    };
    const done = await run(300, 'c.tar');
    assert.equal(done.status, 'Success');
    assert.equal(await readFile(join(dir, 'c.tar'), 'utf8'), Buffer.concat(pieces).toString());
    assert.ok(!asked.includes('DELETE /1.0/operations/op1'), 'nothing cancelled');
    await rm(join(dir, 'c.tar'));
  });
});
