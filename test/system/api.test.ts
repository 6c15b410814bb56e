import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import WebSocket from 'ws';
import { type Daemon, request, startDaemon } from './harness.ts';

describe('the REST API: HTTPS with a token, events, metrics, operations, OpenAPI', () => {
  let d: Daemon;
  before(async () => {
    d = await startDaemon({ tcp: true });
  });
  after(async () => {
    await d?.destroy();
  });

  const token = async () => (await import('node:fs')).readFileSync(`${d.stateDir}/token`, 'utf8').trim();

  test('TCP (HTTPS) refuses requests without the bearer token and serves them with it', async () => {
    assert.ok(d.url, 'daemon listens on TCP');
    assert.match(d.url, /^https:\/\//, 'with TLS');
    const anon = await request({ url: d.url }, 'GET', '/1.0/guests');
    assert.equal(anon.status, 401);
    assert.equal(anon.body.type, 'error');
    const wrong = await request({ url: d.url }, 'GET', '/1.0/guests', undefined, {
      authorization: 'Bearer nope',
    });
    assert.equal(wrong.status, 401);
    const ok = await request({ url: d.url }, 'GET', '/1.0/guests', undefined, {
      authorization: `Bearer ${await token()}`,
    });
    assert.equal(ok.status, 200);
    assert.equal(ok.body.type, 'sync');
    d.ok(['remote', 'add', 'tcp', d.url, '--token', await token(), '--accept-certificate']);
    const r = d.cli(['list', '--remote', 'tcp', '--format', 'json']);
    assert.equal(r.code, 0, r.stderr);
  });

  test('the unix socket is root-only', async () => {
    const { statSync } = await import('node:fs');
    assert.equal(statSync(d.socket).mode & 0o777, 0o600);
  });

  test('/1.0/events streams lifecycle events of a launch', async () => {
    const ws = new WebSocket(`ws+unix://${d.socket}:/1.0/events?type=lifecycle`);
    const seen: Array<{ action?: string; metadata: { name?: string } }> = [];
    await new Promise((r, j) => {
      ws.once('open', r);
      ws.once('error', j);
    });
    ws.on('message', (m) => seen.push(JSON.parse(m.toString())));
    d.ok(['launch', 'busybox', 'ev1']);
    const deadline = Date.now() + 10_000;
    while (
      !seen.some((e) => e.action === 'guest-started' && e.metadata.name === 'ev1') &&
      Date.now() < deadline
    ) {
      await new Promise((r) => setTimeout(r, 50));
    }
    ws.close();
    assert.ok(
      seen.some((e) => e.action === 'guest-created' && e.metadata.name === 'ev1'),
      JSON.stringify(seen),
    );
    assert.ok(seen.some((e) => e.action === 'guest-started' && e.metadata.name === 'ev1'));
  });

  test('trivisor monitor prints lifecycle events as they happen', async () => {
    const { spawn } = await import('node:child_process');
    const mon = spawn(`${import.meta.dirname}/../../bin/trivisor`, ['monitor', '--type', 'lifecycle'], {
      env: { ...process.env, TRIVISOR_DIR: d.stateDir },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    mon.stdout.on('data', (b: Buffer) => {
      out += b.toString();
    });
    try {
      await new Promise((r) => setTimeout(r, 1000));
      d.ok(['launch', 'busybox', 'mon1']);
      const deadline = Date.now() + 10_000;
      while (!/guest-started/.test(out) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
      assert.match(out, /guest-created/);
      assert.match(out, /guest-started/);
      assert.match(out, /mon1/);
    } finally {
      mon.kill('SIGINT');
      d.ok(['delete', '--force', 'mon1']);
    }
  });

  test('/1.0/metrics has per-guest cpu, memory and processes and host totals', async () => {
    const r = await d.api('GET', '/1.0/metrics');
    assert.equal(r.status, 200);
    const guest = 'member="[^"]+",project="default",name="ev1",model="ct"';
    assert.match(r.text, new RegExp(`trivisor_guest_memory_bytes\\{${guest}\\} [1-9]\\d*`));
    assert.match(r.text, new RegExp(`trivisor_guest_cpu_seconds_total\\{${guest}\\} [\\d.e-]+`));
    assert.match(r.text, new RegExp(`trivisor_guest_processes\\{${guest}\\} [1-9]`));
    assert.match(r.text, /trivisor_host_memory_bytes\{member="[^"]+"\} \d+/);
    assert.match(r.text, /trivisor_guests\{member="[^"]+",status="Running"\} 1/);
  });

  test('long actions are operations that can be listed and waited on', async () => {
    const r = await d.api('PUT', '/1.0/guests/ev1/state', { action: 'stop', timeout: 10 });
    assert.equal(r.status, 202);
    assert.equal(r.body.type, 'async');
    const opPath = r.body.operation as string;
    assert.match(opPath, /^\/1\.0\/operations\/[0-9a-f-]+$/);
    const list = await d.api('GET', '/1.0/operations');
    assert.equal(list.status, 200);
    const waited = await d.api('GET', `${opPath}/wait?timeout=30`);
    assert.equal((waited.body.metadata as { status: string }).status, 'Success');
    const g = await d.api('GET', '/1.0/guests/ev1');
    assert.equal((g.body.metadata as { status: string }).status, 'Stopped');
  });

  test('/1.0/openapi.json describes the routes', async () => {
    const r = await d.api('GET', '/1.0/openapi.json');
    assert.equal(r.status, 200);
    const paths = Object.keys((r.body as { paths: Record<string, unknown> }).paths);
    for (const p of [
      '/1.0/guests',
      '/1.0/guests/{name}',
      '/1.0/guests/{name}/state',
      '/1.0/guests/{name}/exec',
      '/1.0/images',
      '/1.0/operations',
    ]) {
      assert.ok(paths.includes(p), `${p} in ${paths.join(' ')}`);
    }
  });

  test('GET /1.0 tells the host and its drivers', async () => {
    const r = await d.api('GET', '/1.0');
    assert.equal(r.status, 200);
    assert.match(JSON.stringify(r.body.metadata), /"ct"/);
  });
});
