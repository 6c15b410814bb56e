import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { isTrivisorError } from '../core/errors.ts';
import { hostRunner } from '../host/runner.ts';
import {
  isMemberCertificate,
  makeClusterCa,
  makeMemberKey,
  memberNameOf,
  signMemberCertificate,
} from './cluster-ca.ts';

const dir = mkdtempSync(join(tmpdir(), 'trivisor-cluster-ca-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const runner = hostRunner();

describe('cluster CA', () => {
  test('signs a member certificate for the name and address it is told, whatever the request asked, and leaves no key file behind', async () => {
    const ca = await makeClusterCa(join(dir, 'scratch'), { runner });
    assert.match(ca.fingerprint, /^[0-9a-f]{64}$/);
    assert.ok(new X509Certificate(ca.cert).ca, 'the CA certificate is a CA');
    // The joiner asks for another name: the signer's own decides.
    const { key, csr } = await makeMemberKey(join(dir, 'scratch'), { runner, name: 'evil' });
    assert.match(key, /PRIVATE KEY/);
    const cert = await signMemberCertificate(join(dir, 'scratch'), {
      runner,
      ca,
      csr,
      name: 'm2',
      address: '198.18.7.2',
    });
    const x509 = new X509Certificate(cert);
    assert.equal(memberNameOf(x509), 'm2');
    assert.equal(x509.subjectAltName, 'IP Address:198.18.7.2');
    assert.ok(isMemberCertificate(cert, ca.cert, 'm2'));
    assert.ok(!isMemberCertificate(cert, ca.cert, 'm3'), 'another member name is refused');
    const other = await makeClusterCa(join(dir, 'scratch'), { runner });
    assert.ok(!isMemberCertificate(cert, other.cert), 'another CA is refused');
    assert.deepEqual(readdirSync(join(dir, 'scratch')), [], 'openssl scratch files are removed');
  });

  test('a request that is not one PEM block, or an address that is not an IP, is InvalidArgument', async () => {
    const ca = await makeClusterCa(join(dir, 'scratch'), { runner });
    const { csr } = await makeMemberKey(join(dir, 'scratch'), { runner, name: 'm' });
    for (const [bad, address] of [
      ['not a csr', '198.18.0.1'],
      [csr.replace(/[A-Za-z]{10}/, 'AAAAAAAAAA'), '198.18.0.1'],
      [csr, 'host.example'],
    ] as const) {
      await assert.rejects(
        signMemberCertificate(join(dir, 'scratch'), { runner, ca, csr: bad, name: 'm', address }),
        (e: unknown) => isTrivisorError(e) && e.code === 'InvalidArgument' && !e.message.includes('\n'),
      );
    }
  });
});
