import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server, type Socket } from 'node:net';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { isTrivisorError } from '../../core/errors.ts';
import { connectQmp, QmpCommandError } from './qmp-client.ts';
import { migrateOut } from './vm-migration.ts';

const GREETING = {
  QMP: { version: { qemu: { major: 7, minor: 2, micro: 22 }, package: '' }, capabilities: ['oob'] },
};

/** A QMP server that answers like QEMU: greeting, capabilities, then scripted commands. */
function fakeQemu(
  path: string,
  answer: (cmd: { execute: string; id?: string; arguments?: unknown }, s: Socket) => void,
) {
  const received: string[] = [];
  const server: Server = createServer((s) => {
    s.write(`${JSON.stringify(GREETING)}\r\n`);
    let buf = '';
    s.on('data', (d) => {
      buf += d.toString();
      for (let nl = buf.indexOf('\n'); nl >= 0; nl = buf.indexOf('\n')) {
        const cmd = JSON.parse(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        received.push(cmd.execute);
        if (cmd.execute === 'qmp_capabilities') s.write(`${JSON.stringify({ return: {}, id: cmd.id })}\r\n`);
        else answer(cmd, s);
      }
    });
  });
  return new Promise<{ server: Server; received: string[] }>((resolve) =>
    server.listen(path, () => resolve({ server, received })),
  );
}

describe('QMP client', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp('/tmp/trivisor-qmp-');
  });
  after(() => rm(dir, { recursive: true, force: true }));

  test('negotiates capabilities, matches replies by id, reports errors and events', async () => {
    const path = join(dir, 'a.sock');
    const { server, received } = await fakeQemu(path, (cmd, s) => {
      const reply = (o: object) => s.write(`${JSON.stringify({ ...o, id: cmd.id })}\r\n`);
      if (cmd.execute === 'query-status') {
        // An event may arrive between a command and its reply.
        s.write(
          `${JSON.stringify({ event: 'STOP', data: {}, timestamp: { seconds: 1, microseconds: 2 } })}\r\n`,
        );
        reply({ return: { status: 'paused', running: false } });
      } else if (cmd.execute === 'slow') {
        setTimeout(() => reply({ return: 'late' }), 20);
      } else {
        reply({ error: { class: 'CommandNotFound', desc: `The command ${cmd.execute} has not been found` } });
      }
    });
    const qmp = await connectQmp(path);
    try {
      assert.equal(qmp.greeting.version.qemu.major, 7);
      const stop = qmp.waitForEvent('STOP', { timeoutMs: 2000 });
      const [slow, status] = await Promise.all([
        qmp.execute('slow'),
        qmp.execute<{ status: string }>('query-status'),
      ]);
      assert.equal(slow, 'late');
      assert.equal(status.status, 'paused');
      assert.equal((await stop).event, 'STOP');
      await assert.rejects(qmp.execute('nope'), (e: unknown) => {
        assert.ok(e instanceof QmpCommandError);
        assert.equal(e.errorClass, 'CommandNotFound');
        return true;
      });
      assert.deepEqual(received, ['qmp_capabilities', 'slow', 'query-status', 'nope']);
    } finally {
      qmp.close();
      server.close();
    }
    await qmp.closed;
  });

  test('a command QEMU never answers times out, and a closed connection fails pending commands', async () => {
    const path = join(dir, 'b.sock');
    let peer: Socket | undefined;
    const { server } = await fakeQemu(path, (_cmd, s) => {
      peer = s;
    });
    const qmp = await connectQmp(path);
    try {
      await assert.rejects(qmp.execute('query-status', undefined, { timeoutMs: 50 }), /did not answer/);
      const pending = qmp.execute('quit');
      await new Promise((r) => setTimeout(r, 20));
      peer?.destroy();
      await assert.rejects(pending, (e: unknown) => isTrivisorError(e) && e.code === 'Unavailable');
      await qmp.closed;
      await assert.rejects(qmp.execute('query-status'), /closed/);
    } finally {
      qmp.close();
      server.close();
    }
  });

  test('connecting to a socket nobody listens on is Unavailable', async () => {
    await assert.rejects(
      connectQmp(join(dir, 'none.sock')),
      (e: unknown) => isTrivisorError(e) && e.code === 'Unavailable',
    );
  });

  test("a command's signal ends its wait at once (Cancelled); QEMU's late answer is dropped and the connection goes on", async () => {
    const path = join(dir, 'c.sock');
    const { server } = await fakeQemu(path, (cmd, s) => {
      const reply = () => s.write(`${JSON.stringify({ return: cmd.execute, id: cmd.id })}\r\n`);
      setTimeout(reply, cmd.execute === 'hang' ? 200 : 0);
    });
    const qmp = await connectQmp(path);
    try {
      const stop = new AbortController();
      const started = Date.now();
      const waiting = qmp.execute('hang', undefined, { timeoutMs: 10_000, signal: stop.signal });
      setTimeout(() => stop.abort(), 30);
      await assert.rejects(waiting, (e: unknown) => isTrivisorError(e) && e.code === 'Cancelled');
      assert.ok(Date.now() - started < 2000, 'the wait ended with the signal, not the timeout');
      await new Promise((r) => setTimeout(r, 250));
      assert.equal(await qmp.execute('query-status'), 'query-status');
    } finally {
      qmp.close();
      server.close();
    }
  });
});

describe('QMP during a migration (QEMU busy)', () => {
  let dir: string;
  before(async () => {
    dir = await mkdtemp('/tmp/trivisor-qmp-');
  });
  after(() => rm(dir, { recursive: true, force: true }));

  /** A source QEMU that answers object-add after `objectAddMs` (never: undefined) and the rest at once. */
  async function busySource(path: string, objectAddMs: number | undefined) {
    return fakeQemu(path, (cmd, s) => {
      const reply = (value: unknown) => s.write(`${JSON.stringify({ return: value, id: cmd.id })}\r\n`);
      if (cmd.execute === 'object-add') {
        if (objectAddMs !== undefined) setTimeout(() => reply({}), objectAddMs);
      } else if (cmd.execute === 'query-migrate') reply({ status: 'completed', downtime: 7 });
      else if (cmd.execute === 'query-status') reply({ status: 'running' });
      else reply({});
    });
  }

  test('a command answered later than the client default, within the migration wait, does not fail the move', async () => {
    const path = join(dir, 'late.sock');
    const { server, received } = await busySource(path, 400);
    // The client's own default (the vm driver's 5 s, scaled down) would give up on object-add.
    const qmp = await connectQmp(path, { timeoutMs: 100 });
    try {
      await assert.rejects(
        qmp.execute('object-add', { id: 'probe' }),
        (e: unknown) => isTrivisorError(e) && e.code === 'Unavailable',
      );
      const result = await migrateOut(qmp, {
        to: { host: '198.18.0.2', nbdPort: 0, migrationPort: 2 },
        downtimeLimitMs: 300,
        sync: 'shared',
        tlsDir: '/nonexistent',
        signal: new AbortController().signal,
        pollMs: 5,
        qmpTimeoutMs: 3000,
      });
      assert.equal(result.downtimeMs, 7);
      assert.ok(received.includes('migrate'));
    } finally {
      qmp.close();
      server.close();
    }
  });

  test('a QEMU that never answers still ends the move: the migration wait runs out, the roll-back is sent and bounded too', async () => {
    const path = join(dir, 'hung.sock');
    const { server, received } = await busySource(path, undefined);
    const qmp = await connectQmp(path, { timeoutMs: 100 });
    try {
      const started = Date.now();
      await assert.rejects(
        migrateOut(qmp, {
          to: { host: '198.18.0.2', nbdPort: 0, migrationPort: 2 },
          downtimeLimitMs: 300,
          sync: 'shared',
          tlsDir: '/nonexistent',
          signal: new AbortController().signal,
          pollMs: 5,
          qmpTimeoutMs: 300,
        }),
        /QEMU did not answer object-add within 300ms/,
      );
      assert.ok(Date.now() - started < 3000);
      // The guest is resumed here (resumeSource asks first); the bitmaps' re-arm may follow (decision 0062).
      const after = received.slice(received.lastIndexOf('object-add') + 1);
      assert.ok(after.includes('query-status'), `the guest is resumed here: ${after.join(', ')}`);
      assert.ok(!received.includes('migrate'));
    } finally {
      qmp.close();
      server.close();
    }
  });

  test("the move's cancel ends a wait for a hung QEMU at once, and the roll-back still runs", async () => {
    const path = join(dir, 'cancel.sock');
    const { server, received } = await busySource(path, undefined);
    const qmp = await connectQmp(path, { timeoutMs: 100 });
    try {
      const cancel = new AbortController();
      setTimeout(() => cancel.abort(), 50);
      const started = Date.now();
      await assert.rejects(
        migrateOut(qmp, {
          to: { host: '198.18.0.2', nbdPort: 0, migrationPort: 2 },
          downtimeLimitMs: 300,
          sync: 'shared',
          tlsDir: '/nonexistent',
          signal: cancel.signal,
          pollMs: 5,
          qmpTimeoutMs: 60_000,
        }),
        (e: unknown) => isTrivisorError(e) && e.code === 'Cancelled',
      );
      assert.ok(Date.now() - started < 3000, 'not the 60 s wait');
      const after = received.slice(received.lastIndexOf('object-add') + 1);
      assert.ok(after.includes('query-status'), `the guest is resumed here: ${after.join(', ')}`);
    } finally {
      qmp.close();
      server.close();
    }
  });
});
