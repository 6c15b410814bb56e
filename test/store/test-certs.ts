import { execFileSync } from 'node:child_process';
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

/** A certificate and its key, as files. */
export interface CertFiles {
  certFile: string;
  keyFile: string;
}

/** A throwaway CA for tests (the cluster CA of issue 12 part 3 will make the real ones). */
export interface TestCa extends CertFiles {
  /** A certificate for `name`, valid for 127.0.0.1 and localhost, usable as server and client. */
  issue(name: string): CertFiles;
}

const openssl = (args: string[]) => execFileSync('openssl', args, { stdio: ['ignore', 'ignore', 'pipe'] });

/** Makes a CA under `dir` (EC P-256 keys: fast to make). */
export function makeTestCa(dir: string, name = 'trivisor-test-ca'): TestCa {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  const keyFile = join(dir, 'ca.key');
  const certFile = join(dir, 'ca.crt');
  openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', keyFile]);
  openssl([
    'req',
    '-x509',
    '-new',
    '-key',
    keyFile,
    '-sha256',
    '-days',
    '2',
    '-subj',
    `/CN=${name}`,
    '-out',
    certFile,
  ]);
  return {
    certFile,
    keyFile,
    issue(member) {
      const key = join(dir, `${member}.key`);
      const csr = join(dir, `${member}.csr`);
      const crt = join(dir, `${member}.crt`);
      const ext = join(dir, `${member}.ext`);
      writeFileSync(
        ext,
        [
          'basicConstraints=CA:FALSE',
          'keyUsage=digitalSignature,keyEncipherment',
          'extendedKeyUsage=serverAuth,clientAuth',
          'subjectAltName=IP:127.0.0.1,DNS:localhost',
          '',
        ].join('\n'),
      );
      openssl(['ecparam', '-name', 'prime256v1', '-genkey', '-noout', '-out', key]);
      openssl(['req', '-new', '-key', key, '-subj', `/CN=${member}`, '-out', csr]);
      openssl([
        'x509',
        '-req',
        '-in',
        csr,
        '-CA',
        certFile,
        '-CAkey',
        keyFile,
        '-CAcreateserial',
        '-days',
        '2',
        '-sha256',
        '-extfile',
        ext,
        '-out',
        crt,
      ]);
      return { certFile: crt, keyFile: key };
    },
  };
}
