import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { createMemoryStore } from '../store/memory-store.ts';
import { authKeys, createAuthService } from './auth-service.ts';

describe('auth service: tokens', () => {
  test('a token is shown once: the store keeps only its hash, and the secret authenticates', async () => {
    const store = createMemoryStore();
    const auth = createAuthService({ store });
    const { token, secret } = await auth.createToken(
      { name: 'ci', role: 'operator', projects: ['p1', 'p2'] },
      'root',
    );
    assert.match(secret, /^trv_ci_[A-Za-z0-9_-]{43}$/);
    assert.deepEqual(
      { ...token, createdAt: '' },
      {
        name: 'ci',
        description: '',
        role: 'operator',
        projects: ['p1', 'p2'],
        createdAt: '',
        createdBy: 'root',
      },
    );
    const stored = (await store.get(authKeys.token('ci')))!.value;
    assert.ok(!stored.includes(secret.slice(7)), 'the secret is not stored');
    assert.ok(!JSON.stringify(await auth.listTokens()).includes('secretSha256'), 'nor listed, nor its hash');
    assert.deepEqual(await auth.authenticate({ bearer: secret }), {
      method: 'token',
      name: 'ci',
      role: 'operator',
      projects: ['p1', 'p2'],
    });
    assert.equal(await auth.authenticate({ bearer: `${secret.slice(0, -1)}x` }), undefined);
    assert.equal(
      await auth.authenticate({ bearer: 'trv_nosuch_AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA' }),
      undefined,
    );
    assert.equal(await auth.authenticate({ bearer: 'anything' }), undefined);
    await auth.revokeToken('ci');
    assert.equal(await auth.authenticate({ bearer: secret }), undefined);
    await assert.rejects(auth.revokeToken('ci'), /No token is named ci/);
  });

  test('names, roles and projects are checked; a name is taken once', async () => {
    const auth = createAuthService({
      store: createMemoryStore(),
      assertProjectExists: async (p) => {
        if (p !== 'p1') throw new Error(`Project ${p} not found`);
      },
    });
    await assert.rejects(
      auth.createToken({ name: 'Bad Name', role: 'viewer', projects: ['p1'] }, 'r'),
      /token name/,
    );
    await assert.rejects(
      auth.createToken({ name: 'admin', role: 'viewer', projects: ['p1'] }, 'r'),
      /daemon's own token/,
    );
    await assert.rejects(
      auth.createToken({ name: 'x', role: 'root' as 'viewer', projects: ['p1'] }, 'r'),
      /Unknown role "root": use viewer, operator, admin/,
    );
    await assert.rejects(
      auth.createToken({ name: 'x', role: 'viewer', projects: [] }, 'r'),
      /Give the projects/,
    );
    await assert.rejects(
      auth.createToken({ name: 'x', role: 'viewer', projects: ['*', 'p1'] }, 'r'),
      /give it alone/,
    );
    await assert.rejects(
      auth.createToken({ name: 'x', role: 'viewer', projects: ['p9'] }, 'r'),
      /Project p9 not found/,
    );
    await auth.createToken({ name: 'x', role: 'viewer', projects: ['*'] }, 'r');
    await assert.rejects(
      auth.createToken({ name: 'x', role: 'viewer', projects: ['p1'] }, 'r'),
      /already exists/,
    );
  });
});

describe('auth service: records that do not decode', () => {
  test('a token or certificate record that is not valid authenticates nobody, and grants no role', async () => {
    const store = createMemoryStore();
    const auth = createAuthService({ store });
    const { secret } = await auth.createToken({ name: 'ci', role: 'viewer', projects: ['*'] }, 'root');
    const stored = JSON.parse((await store.get(authKeys.token('ci')))?.value ?? '{}') as Record<
      string,
      unknown
    >;
    // A role no version knows (a corrupt or foreign record) is not taken for one.
    await store.put(authKeys.token('ci'), JSON.stringify({ ...stored, role: 'root' }));
    assert.equal(await auth.authenticate({ bearer: secret }), undefined);
    await store.put(authKeys.token('ci'), '{not json');
    assert.equal(await auth.authenticate({ bearer: secret }), undefined);
    await store.put(
      authKeys.certificate('ab'.repeat(32)),
      JSON.stringify({ fingerprint: 'ab'.repeat(32), role: 'admin' }),
    );
    assert.equal(await auth.authenticate({ certificateFingerprint: 'ab'.repeat(32) }), undefined);
  });
});
