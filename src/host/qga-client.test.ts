import assert from 'node:assert/strict';
import { Duplex } from 'node:stream';
import { describe, test } from 'node:test';
import { createQgaClient } from './qga-client.ts';

type Reply = string | Buffer | null;

/**
 * A scripted agent on the other end of a stream: `answer` maps each request
 * (parsed JSON) to the bytes sent back; a sync gets the proper answer unless
 * `answer` says otherwise. Requests are recorded.
 */
function fakeAgent(answer: (request: Record<string, unknown>) => Reply | undefined = () => undefined) {
  const requests: Array<Record<string, unknown>> = [];
  let pendingText = '';
  const stream = new Duplex({
    read() {},
    write(chunk: Buffer, _encoding, callback) {
      // The agent drops a 0xFF and anything half-read before it.
      const bytes = chunk.toString('latin1');
      const cut = bytes.lastIndexOf('\xff');
      pendingText = cut >= 0 ? bytes.slice(cut + 1) : pendingText + bytes;
      let nl = pendingText.indexOf('\n');
      while (nl >= 0) {
        const line = pendingText.slice(0, nl);
        pendingText = pendingText.slice(nl + 1);
        const request = JSON.parse(line) as Record<string, unknown>;
        requests.push(request);
        const scripted = answer(request);
        if (scripted !== undefined) {
          if (scripted !== null) setImmediate(() => stream.push(Buffer.from(scripted as string, 'latin1')));
        } else if (request.execute === 'guest-sync-delimited') {
          const id = (request.arguments as { id: number }).id;
          setImmediate(() =>
            stream.push(Buffer.concat([Buffer.from([0xff]), Buffer.from(`{"return": ${id}}\n`)])),
          );
        }
        nl = pendingText.indexOf('\n');
      }
      callback();
    },
  });
  return { stream, requests, push: (data: string | Buffer) => stream.push(data) };
}

describe('createQgaClient', () => {
  test('syncs before the first request and skips stale bytes and answers of other syncs', async () => {
    const agent = fakeAgent((r) => {
      if (r.execute === 'guest-sync-delimited') {
        const id = (r.arguments as { id: number }).id;
        return `{"return": {}}\n stale garbage \xff{"return": 1}\n\xff{"return": ${id}}\n`;
      }
      if (r.execute === 'guest-ping') return '{"return": {}}\n';
      return undefined;
    });
    const client = createQgaClient(agent.stream);
    await client.ping();
    assert.deepEqual(
      agent.requests.map((r) => r.execute),
      ['guest-sync-delimited', 'guest-ping'],
    );
    client.close();
  });

  test('lines echoed by a serial line are not taken for answers', async () => {
    const agent = fakeAgent((r) => {
      const echo = `${r.execute === 'guest-sync-delimited' ? '\xff' : ''}${JSON.stringify(r)}\n`;
      if (r.execute === 'guest-sync-delimited') {
        const id = (r.arguments as { id: number }).id;
        return Buffer.from(`${echo}\xff{"return": ${id}}\n`, 'latin1');
      }
      return `${echo}{"return": {"version": "7.2"}}\n`;
    });
    const client = createQgaClient(agent.stream);
    assert.deepEqual(await client.command('guest-info'), { version: '7.2' });
    client.close();
  });

  test('a request that times out makes the next one resync, so its late answer is dropped', async () => {
    let first = true;
    const agent = fakeAgent((r) => {
      if (r.execute === 'guest-get-osinfo') {
        if (first) {
          first = false;
          return null; // answered late, below
        }
        return '{"return": {"id": "second"}}\n';
      }
      return undefined;
    });
    const client = createQgaClient(agent.stream, { requestTimeoutMs: 100 });
    await assert.rejects(client.osInfo(), { code: 'Unavailable' });
    agent.push('{"return": {"id": "late"}}\n');
    assert.deepEqual(await client.osInfo(), { id: 'second' });
    const syncs = agent.requests.filter((r) => r.execute === 'guest-sync-delimited');
    assert.equal(syncs.length, 2);
    client.close();
  });

  test('an agent error rejects with the command and its description; the client goes on', async () => {
    const agent = fakeAgent((r) => {
      if (r.execute === 'guest-file-open')
        return '{"error": {"class": "GenericError", "desc": "No such file"}}\n';
      if (r.execute === 'guest-ping') return '{"return": {}}\n';
      return undefined;
    });
    const client = createQgaClient(agent.stream);
    await assert.rejects(client.readFile('/missing'), /refused guest-file-open: No such file/);
    await client.ping();
    client.close();
  });

  test('exec polls guest-exec-status until the command exits and decodes its output', async () => {
    let polls = 0;
    const agent = fakeAgent((r) => {
      if (r.execute === 'guest-exec') {
        const args = r.arguments as Record<string, unknown>;
        assert.deepEqual(args.arg, ['-c', 'x']);
        assert.deepEqual(args.env, ['A=1']);
        assert.equal(Buffer.from(String(args['input-data']), 'base64').toString(), 'in');
        return '{"return": {"pid": 42}}\n';
      }
      if (r.execute === 'guest-exec-status') {
        polls++;
        if (polls < 3) return '{"return": {"exited": false}}\n';
        const out = Buffer.from('out').toString('base64');
        return `{"return": {"exited": true, "signal": 9, "out-data": "${out}"}}\n`;
      }
      return undefined;
    });
    const client = createQgaClient(agent.stream);
    let started = 0;
    const r = await client.exec(['/bin/sh', '-c', 'x'], {
      env: { A: '1' },
      input: 'in',
      onStart: (p) => (started = p),
    });
    assert.equal(started, 42);
    assert.equal(r.exitCode, 137);
    assert.equal(r.stdout.toString(), 'out');
    assert.equal(r.stderr.length, 0);
    assert.equal(polls, 3);
    client.close();
  });

  test('file reads and writes go in chunks of fileChunkBytes', async () => {
    const written: string[] = [];
    const content = Buffer.from('0123456789');
    let readAt = 0;
    const agent = fakeAgent((r) => {
      const args = (r.arguments ?? {}) as Record<string, unknown>;
      if (r.execute === 'guest-file-open') return '{"return": 5}\n';
      if (r.execute === 'guest-file-write') {
        const chunk = Buffer.from(String(args['buf-b64']), 'base64');
        written.push(chunk.toString());
        return `{"return": {"count": ${chunk.length}, "eof": false}}\n`;
      }
      if (r.execute === 'guest-file-read') {
        const chunk = content.subarray(readAt, readAt + Number(args.count));
        readAt += chunk.length;
        return `{"return": {"count": ${chunk.length}, "buf-b64": "${chunk.toString('base64')}", "eof": ${readAt >= content.length}}}\n`;
      }
      if (r.execute === 'guest-file-flush' || r.execute === 'guest-file-close') return '{"return": {}}\n';
      return undefined;
    });
    const client = createQgaClient(agent.stream, { fileChunkBytes: 4 });
    await client.writeFile('/f', content);
    assert.deepEqual(written, ['0123', '4567', '89']);
    assert.equal((await client.readFile('/f')).toString(), '0123456789');
    const reads = agent.requests.filter((r) => r.execute === 'guest-file-read');
    assert.equal(reads.length, 3);
    assert.ok(reads.every((r) => (r.arguments as { count: number }).count === 4));
    client.close();
  });

  test('shutdown expects no answer and makes the next request resync', async () => {
    const agent = fakeAgent((r) => (r.execute === 'guest-ping' ? '{"return": {}}\n' : undefined));
    const client = createQgaClient(agent.stream);
    await client.shutdown();
    await client.ping();
    assert.deepEqual(
      agent.requests.map((r) => r.execute),
      ['guest-sync-delimited', 'guest-shutdown', 'guest-sync-delimited', 'guest-ping'],
    );
    assert.deepEqual(agent.requests[1]?.arguments, { mode: 'powerdown' });
    client.close();
  });

  test('a closed stream fails the pending request and every later one', async () => {
    const agent = fakeAgent((r) => (r.execute === 'guest-ping' ? null : undefined));
    const client = createQgaClient(agent.stream, { guestName: 'v1' });
    const pending = client.ping();
    setTimeout(() => agent.stream.destroy(), 20);
    await assert.rejects(pending, { code: 'Unavailable', message: /guest agent of guest v1 closed/ });
    await assert.rejects(client.ping(), { code: 'Unavailable' });
  });

  test('waitReady retries syncs until the agent answers', async () => {
    let silent = 3;
    const agent = fakeAgent((r) => (r.execute === 'guest-sync-delimited' && silent-- > 0 ? null : undefined));
    const client = createQgaClient(agent.stream);
    await client.waitReady({ timeoutMs: 10_000 });
    assert.ok(agent.requests.length >= 4);
    client.close();
  });
});
