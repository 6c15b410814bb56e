import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import { createFakeServices } from '../../test/fakes/fake-services.ts';
import { certificateFingerprint } from '../api/certificates.ts';
import type { Caller } from '../core/access.ts';
import { isTrivisorError } from '../core/errors.ts';
import { hostRunner } from '../host/runner.ts';
import {
  createForwarder,
  encodeCaller,
  FORWARDED_BY_HEADER,
  FORWARDED_CALLER_HEADER,
} from '../server/forward.ts';
import { listenTcp } from '../server/listen.ts';
import { createAuthService } from '../services/auth-service.ts';
import { createMemoryStore } from '../store/memory-store.ts';
import { records } from '../store/records.ts';
import { type ClusterCa, makeClusterCa, makeMemberKey, signMemberCertificate } from './cluster-ca.ts';
import { buildMemberApi } from './member-api.ts';
import { createMemberClient, type MemberTls, requestWithPinnedCa } from './member-client.ts';

const dir = mkdtempSync(join(tmpdir(), 'trivisor-member-api-'));
const runner = hostRunner();

async function issue(ca: ClusterCa, name: string): Promise<MemberTls> {
  const { key, csr } = await makeMemberKey(join(dir, 'scratch'), { runner, name });
  const cert = await signMemberCertificate(join(dir, 'scratch'), {
    runner,
    ca,
    csr,
    name,
    address: '127.0.0.1',
  });
  return { ca: ca.cert, cert, key };
}

describe('the member API', () => {
  let app: FastifyInstance;
  let address: string;
  let ca: ClusterCa;
  let m2: MemberTls;
  let removed: MemberTls;
  const store = createMemoryStore();

  before(async () => {
    ca = await makeClusterCa(join(dir, 'scratch'), { runner });
    const m1 = await issue(ca, 'm1');
    m2 = await issue(ca, 'm2');
    // Signed by the cluster CA, but no longer a member: its record is gone.
    removed = await issue(ca, 'm3');
    for (const [name, tls] of [
      ['m1', m1],
      ['m2', m2],
    ] as const) {
      await records.member.at(name).put(store, {
        name,
        address: '127.0.0.1:8444',
        roles: ['etcd-voter'],
        certificateFingerprint: certificateFingerprint(tls.cert),
        version: '0.1.0',
        joinedAt: new Date().toISOString(),
        evacuated: false,
      });
    }
    const services = createFakeServices();
    const auth = createAuthService({ store });
    app = await buildMemberApi({ ...services, auth }, { store, tls: m1, token: 'daemon-token' });
    address = `127.0.0.1:${(await listenTcp(app, '127.0.0.1', 0)).port}`;
  });
  after(async () => {
    await app?.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  });

  test("a member's certificate makes it the host's admin there; a removed member's, or none, is a 401", async () => {
    const asMember = await createMemberClient(() => m2).request<unknown[]>(
      { name: 'm1', address },
      'GET',
      '/1.0/auth/tokens',
    );
    assert.equal(asMember.status, 200);
    await assert.rejects(
      createMemberClient(() => removed).request({ name: 'm1', address }, 'GET', '/1.0/auth/tokens'),
      (e: unknown) => isTrivisorError(e) && e.code === 'Unauthenticated',
    );
    // A joiner has no certificate: it reaches the public routes only.
    await assert.rejects(
      requestWithPinnedCa(address, {
        caFingerprint: ca.fingerprint,
        method: 'GET',
        path: '/1.0/auth/tokens',
      }),
      (e: unknown) => isTrivisorError(e) && e.code === 'Unauthenticated',
    );
    const info = await requestWithPinnedCa<{ auth: string }>(address, {
      caFingerprint: ca.fingerprint,
      method: 'GET',
      path: '/1.0',
    });
    assert.equal(info.metadata.auth, 'untrusted');
  });

  test("a request passed on by a member is its first caller's: that caller's role decides, its body arrives whole; only a member may pass a caller on", async () => {
    // m2's side of a forward (server/forward.ts), as the API's onRequest hook runs it: the body unread.
    const front = Fastify();
    const forwarder = createForwarder({
      here: 'm2',
      others: async () => ['m1'],
      connect: () => createMemberClient(() => m2).connect({ name: 'm1', address }),
    });
    let caller: Caller | null = null;
    front.decorateRequest('caller', null);
    front.addHook('onRequest', async (request, reply) => {
      (request as unknown as { caller: Caller | null }).caller = caller;
      await forwarder.proxy(request, reply, 'm1');
      return reply;
    });
    front.all('/*', async () => ({}));
    const port = (await listenTcp(front, '127.0.0.1', 0)).port;
    try {
      const viewer: Caller = { method: 'token', name: 'ro', role: 'viewer', projects: ['default'] };
      const admin: Caller = { method: 'token', name: 'ops', role: 'admin', projects: ['*'] };
      caller = viewer;
      const refused = await fetch(`http://127.0.0.1:${port}/1.0/auth/tokens`);
      assert.equal(refused.status, 403);
      assert.match(((await refused.json()) as { error: string }).error, /ro/);
      caller = admin;
      const made = await fetch(`http://127.0.0.1:${port}/1.0/auth/tokens`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({ name: 'passed-on', role: 'viewer', projects: ['default'] }),
      });
      assert.equal(made.status, 200, await made.clone().text());
      assert.ok(await records.token.at('passed-on').get(store), 'the token was made on m1');
      // A certificate the cluster CA signed for a member no longer recorded cannot pass a caller on.
      const socket = await createMemberClient(() => removed)
        .connect({ name: 'm1', address })
        .catch((e: unknown) => e);
      assert.ok(!(socket instanceof Error), String(socket));
      const status = await new Promise<number>((resolve, reject) => {
        const req = httpRequest(
          {
            createConnection: () => socket as Socket,
            path: '/1.0/auth/tokens',
            headers: { [FORWARDED_CALLER_HEADER]: encodeCaller(admin), [FORWARDED_BY_HEADER]: 'm3' },
          },
          (res) => {
            res.resume();
            resolve(res.statusCode ?? 0);
          },
        );
        req.on('error', reject);
        req.end();
      });
      assert.equal(status, 401);
    } finally {
      await front.close();
    }
  });

  test('there is no plain-HTTP hop: HTTP on the member port gets no answer', async () => {
    const answer = await new Promise<string>((resolve, reject) => {
      const socket = connect(Number(address.split(':')[1]), '127.0.0.1');
      let text = '';
      socket.on('data', (d: Buffer) => {
        text += d.toString('latin1');
      });
      socket.on('connect', () => socket.write('GET /1.0 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n'));
      socket.on('close', () => resolve(text));
      socket.on('error', reject);
      socket.setTimeout(3000, () => socket.destroy());
    });
    assert.doesNotMatch(answer, /HTTP\/1\.1/);
  });
});
