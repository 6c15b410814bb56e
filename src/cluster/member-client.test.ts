import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import type { TLSSocket } from 'node:tls';
import { isTrivisorError } from '../core/errors.ts';
import { hostRunner } from '../host/runner.ts';
import {
  type ClusterCa,
  makeClusterCa,
  makeMemberKey,
  memberNameOf,
  signMemberCertificate,
} from './cluster-ca.ts';
import { createMemberClient, type MemberTls, requestWithPinnedCa } from './member-client.ts';

const dir = mkdtempSync(join(tmpdir(), 'trivisor-member-client-'));
const runner = hostRunner();
const servers: Server[] = [];
after(async () => {
  for (const s of servers) await new Promise((r) => s.close(r));
  rmSync(dir, { recursive: true, force: true });
});

async function issue(ca: ClusterCa, name: string): Promise<{ cert: string; key: string }> {
  const { key, csr } = await makeMemberKey(join(dir, 'scratch'), { runner, name });
  const cert = await signMemberCertificate(join(dir, 'scratch'), {
    runner,
    ca,
    csr,
    name,
    address: '127.0.0.1',
  });
  return { cert, key };
}

/** An HTTPS server as the member API would be: it asks for a client certificate and records what came. */
async function serve(credentials: { cert: string; key: string; chain?: string; ca?: string }) {
  const seen: Array<{ path: string; client: string | undefined; authorized: boolean }> = [];
  const server = createServer(
    {
      cert: credentials.cert + (credentials.chain ?? ''),
      key: credentials.key,
      requestCert: true,
      rejectUnauthorized: false,
      ...(credentials.ca !== undefined && { ca: credentials.ca }),
    },
    (req, res) => {
      const socket = req.socket as TLSSocket;
      const peer = socket.getPeerCertificate();
      seen.push({
        path: req.url ?? '',
        client: peer?.raw ? memberNameOf(new X509Certificate(peer.raw)) : undefined,
        authorized: socket.authorized,
      });
      res.setHeader('content-type', 'application/json');
      if (req.url === '/missing') {
        res.statusCode = 404;
        res.end(JSON.stringify({ type: 'error', error: 'No such thing', error_code: 404, code: 'NotFound' }));
        return;
      }
      res.end(JSON.stringify({ type: 'sync', metadata: { ok: true } }));
    },
  );
  servers.push(server);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { address: `127.0.0.1:${(server.address() as AddressInfo).port}`, seen };
}

describe('member client', () => {
  let ca: ClusterCa;
  let other: ClusterCa;
  let m1: { cert: string; key: string };
  let m2: MemberTls;
  before(async () => {
    ca = await makeClusterCa(join(dir, 'scratch'), { runner });
    other = await makeClusterCa(join(dir, 'scratch'), { runner });
    m1 = await issue(ca, 'm1');
    m2 = { ca: ca.cert, ...(await issue(ca, 'm2')) };
  });

  test('members talk with mutual TLS: each end proves it holds a certificate of the cluster CA', async () => {
    const server = await serve({ ...m1, chain: ca.cert, ca: ca.cert });
    const client = createMemberClient(() => m2);
    const answer = await client.request<{ ok: boolean }>(
      { name: 'm1', address: server.address },
      'GET',
      '/1.0',
    );
    assert.deepEqual(answer, { status: 200, metadata: { ok: true } });
    assert.deepEqual(server.seen, [{ path: '/1.0', client: 'm2', authorized: true }]);
  });

  test('a server that is not the member asked for (another member, another CA) gets no byte of the request', async () => {
    const client = createMemberClient(() => m2);
    const impostor = await serve({ ...(await issue(ca, 'm3')), chain: ca.cert });
    await assert.rejects(
      client.request({ name: 'm1', address: impostor.address }, 'POST', '/1.0/secret', { x: 1 }),
      (e: unknown) =>
        isTrivisorError(e) &&
        e.code === 'Unavailable' &&
        /member m3's/.test(e.message) &&
        /nothing was sent/.test(e.message),
    );
    const foreign = await serve({ ...(await issue(other, 'm1')), chain: other.cert });
    await assert.rejects(
      client.request({ name: 'm1', address: foreign.address }, 'POST', '/1.0/secret', { x: 1 }),
      (e: unknown) => isTrivisorError(e) && e.code === 'Unavailable' && /not the cluster's/.test(e.message),
    );
    assert.deepEqual(impostor.seen, []);
    assert.deepEqual(foreign.seen, []);
  });

  test('an error envelope comes back as its own code and message', async () => {
    const server = await serve({ ...m1, chain: ca.cert });
    await assert.rejects(
      createMemberClient(() => m2).request({ name: 'm1', address: server.address }, 'GET', '/missing'),
      (e: unknown) => isTrivisorError(e) && e.code === 'NotFound' && e.message === 'No such thing',
    );
  });

  test('a joiner talks only to a server whose certificate chains to the CA its token pins, and learns that CA', async () => {
    const server = await serve({ ...m1, chain: ca.cert });
    const answer = await requestWithPinnedCa<{ ok: boolean }>(server.address, {
      caFingerprint: ca.fingerprint,
      method: 'POST',
      path: '/1.0/cluster/members',
      body: { secret: 's' },
    });
    assert.deepEqual(answer.metadata, { ok: true });
    assert.equal(
      new X509Certificate(answer.caCert).fingerprint256,
      new X509Certificate(ca.cert).fingerprint256,
    );
    const foreign = await serve({ ...(await issue(other, 'm1')), chain: other.cert });
    await assert.rejects(
      requestWithPinnedCa(foreign.address, {
        caFingerprint: ca.fingerprint,
        method: 'POST',
        path: '/1.0/cluster/members',
        body: { secret: 's' },
      }),
      (e: unknown) => isTrivisorError(e) && e.code === 'Unavailable' && /nothing was sent/.test(e.message),
    );
    assert.deepEqual(foreign.seen, [], 'the secret never reached the other cluster');
  });

  test('a member that does not answer is Unavailable in one line', async () => {
    await assert.rejects(
      createMemberClient(() => m2).request({ name: 'm1', address: '127.0.0.1:1' }, 'GET', '/1.0'),
      (e: unknown) => isTrivisorError(e) && e.code === 'Unavailable' && /connection refused/.test(e.message),
    );
  });
});
