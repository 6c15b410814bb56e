import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { readFileSync, statSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:https';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { TLSSocket } from 'node:tls';
import { certificateFingerprint } from '../api/certificates.ts';
import { hostRunner } from '../host/runner.ts';
import { ensureServerCertificate, type ServerCertificate } from '../host/server-certificate.ts';
import { createClient } from './client.ts';
import { fetchServerCertificate } from './tls-connect.ts';

/** An HTTPS server that records what reached it: the MITM of these tests, or the real one. */
function recordingServer(cert: ServerCertificate): Promise<{ server: Server; port: number; seen: string[] }> {
  const seen: string[] = [];
  const server = createServer(
    { key: cert.key, cert: cert.cert, requestCert: true, rejectUnauthorized: false },
    (req, res) => {
      const peer = (req.socket as TLSSocket).getPeerCertificate();
      seen.push(
        `${req.method} ${req.url} auth=${req.headers.authorization ?? '-'} cert=${peer?.fingerprint256 ?? '-'}`,
      );
      res.setHeader('content-type', 'application/json');
      res.end(
        JSON.stringify({
          type: 'sync',
          status: 'Success',
          status_code: 200,
          metadata: { api_version: '1.0', auth: 'trusted', auth_methods: [] },
        }),
      );
    },
  );
  return new Promise((resolve) =>
    server.listen(0, '127.0.0.1', () =>
      resolve({ server, port: (server.address() as { port: number }).port, seen }),
    ),
  );
}

describe('server certificates and pinning (real TLS, certificates made by openssl)', () => {
  let dir: string;
  let real: ServerCertificate;
  let other: ServerCertificate;
  const servers: Server[] = [];

  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'trivisor-tls-'));
    real = await ensureServerCertificate(path.join(dir), { runner: hostRunner(), hostName: 'host-a' });
    // A second daemon's certificate: what a machine in the middle would present.
    const otherDir = path.join(dir, 'other');
    await import('node:fs/promises').then((fs) => fs.mkdir(otherDir));
    other = await ensureServerCertificate(otherDir, { runner: hostRunner(), hostName: 'host-b' });
  });
  after(async () => {
    for (const s of servers) s.close();
    await rm(dir, { recursive: true, force: true });
  });

  test('the server certificate is made once: ECDSA P-256, the key root-only, kept across starts', async () => {
    assert.equal(statSync(real.keyPath).mode & 0o777, 0o600);
    assert.equal(real.fingerprint, certificateFingerprint(readFileSync(real.certPath, 'utf8')));
    const text = spawnSync('openssl', ['x509', '-in', real.certPath, '-noout', '-text'], {
      encoding: 'utf8',
    }).stdout;
    assert.match(text, /prime256v1|P-256/);
    assert.match(text, /CN\s*=\s*trivisor@host-a/);
    assert.match(text, /DNS:host-a, DNS:localhost, IP Address:127\.0\.0\.1/);
    const again = await ensureServerCertificate(dir, { runner: hostRunner(), hostName: 'host-a' });
    assert.equal(again.fingerprint, real.fingerprint, 'the same certificate at the next start');
    assert.notEqual(other.fingerprint, real.fingerprint);
  });

  test('the pinned certificate is accepted, and the token goes to it', async () => {
    const { server, port, seen } = await recordingServer(real);
    servers.push(server);
    assert.deepEqual(await fetchServerCertificate({ host: '127.0.0.1', port }), {
      certificate: readFileSync(real.certPath, 'utf8').trim().concat('\n'),
      fingerprint: real.fingerprint,
    });
    const client = createClient({
      url: `https://127.0.0.1:${port}`,
      token: 'tok-123',
      serverFingerprint: real.fingerprint,
    });
    assert.equal((await client.serverInfo()).auth, 'trusted');
    assert.deepEqual(seen, ['GET /1.0 auth=Bearer tok-123 cert=-']);
  });

  test('another certificate (a machine in the middle) is refused before a byte of the request is sent', async () => {
    const { server, port, seen } = await recordingServer(other);
    servers.push(server);
    const client = createClient({
      url: `https://127.0.0.1:${port}`,
      token: 'tok-123',
      serverFingerprint: real.fingerprint,
    });
    await assert.rejects(client.serverInfo(), (e: Error) => {
      assert.equal(
        e.message,
        `The server at https://127.0.0.1:${port} presented a certificate with fingerprint ${other.fingerprint}, not the pinned ${real.fingerprint}: someone may be intercepting the connection, so nothing was sent. If the server's certificate was replaced on purpose, remove the remote and add it again`,
      );
      return true;
    });
    // WebSockets take the same connection.
    await assert.rejects(
      client.events(() => {}),
      /not the pinned/,
    );
    await new Promise((r) => setTimeout(r, 100));
    assert.deepEqual(seen, [], 'nothing reached the impostor');
  });

  test('without a pin, a self-signed certificate is refused (no CA vouches for it)', async () => {
    const { server, port, seen } = await recordingServer(real);
    servers.push(server);
    const client = createClient({ url: `https://127.0.0.1:${port}`, token: 'tok-123' });
    await assert.rejects(
      client.serverInfo(),
      /Cannot reach https:\/\/127\.0\.0\.1:\d+: self-signed certificate/,
    );
    assert.deepEqual(seen, []);
  });

  test('a client certificate is presented when the server asks', async () => {
    const { server, port, seen } = await recordingServer(real);
    servers.push(server);
    const client = createClient({
      url: `https://127.0.0.1:${port}`,
      serverFingerprint: real.fingerprint,
      clientCertificate: { cert: other.cert, key: other.key },
    });
    await client.serverInfo();
    const expected = other.fingerprint.toUpperCase().match(/../g)!.join(':');
    assert.deepEqual(seen, [`GET /1.0 auth=- cert=${expected}`]);
  });
});
