import assert from 'node:assert/strict';
import { statSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { configPath, loadConfig, saveConfig } from './cli-config.ts';
import { remoteOf } from './context.ts';
import { acceptFingerprint, remoteUrl } from './remote-commands.ts';

const FP = 'ab'.repeat(32);
const OTHER = 'cd'.repeat(32);

describe('remote add: pinning a fingerprint', () => {
  const asked: string[] = [];
  const answer = (reply: string) => async (question: string) => {
    asked.push(question);
    return reply;
  };

  test('a fingerprint given on the command line must be the one presented (any spelling)', async () => {
    await acceptFingerprint(FP, {
      fingerprint: FP.toUpperCase().match(/../g)!.join(':'),
      url: 'https://h:8443',
      ask: answer('n'),
    });
    await assert.rejects(
      acceptFingerprint(OTHER, { fingerprint: FP, url: 'https://h:8443', ask: answer('y') }),
      new RegExp(
        `^TrivisorError\\(FailedPrecondition\\): The server at https://h:8443 presented a certificate with fingerprint ${OTHER}, not ${FP}: someone may be intercepting the connection, or it is another server; nothing was saved$`,
      ),
    );
    await assert.rejects(
      acceptFingerprint(FP, { fingerprint: 'abc', url: 'https://h:8443', ask: answer('y') }),
      /is not a SHA-256 fingerprint/,
    );
    assert.deepEqual(asked, [], 'nobody is asked when the fingerprint is given');
  });

  test('otherwise the user is shown it and asked once; only yes pins it', async () => {
    await acceptFingerprint(FP, { url: 'https://h:8443', ask: answer('y') });
    assert.deepEqual(asked, [`Certificate fingerprint: ${FP}\nok (y/n)? `]);
    await assert.rejects(
      acceptFingerprint(FP, { url: 'https://h:8443', ask: answer('') }),
      /was not accepted; nothing was saved/,
    );
    await assert.rejects(
      acceptFingerprint(FP, { url: 'https://h:8443', ask: answer('no') }),
      /was not accepted/,
    );
    asked.length = 0;
    await acceptFingerprint(FP, { url: 'https://h:8443', acceptCertificate: true, ask: answer('n') });
    assert.deepEqual(asked, [], '--accept-certificate asks nothing');
  });

  test('URLs are HTTPS, port 8443 unless given', () => {
    assert.deepEqual(remoteUrl('10.0.0.5'), { url: 'https://10.0.0.5:8443', host: '10.0.0.5', port: 8443 });
    assert.deepEqual(remoteUrl('https://host:9443'), { url: 'https://host:9443', host: 'host', port: 9443 });
    assert.deepEqual(remoteUrl('[::1]:8443'), { url: 'https://[::1]:8443', host: '::1', port: 8443 });
    assert.throws(() => remoteUrl('http://host:8443'), /HTTPS only: write https:\/\/host:8443/);
    assert.throws(() => remoteUrl('https://host/1.0'), /Give only the scheme, host and port/);
  });
});

describe('the CLI config file', () => {
  let dir: string;
  const saved = { ...process.env };
  before(async () => {
    dir = await mkdtemp(path.join(tmpdir(), 'trivisor-cli-config-'));
    process.env.TRIVISOR_CONFIG_DIR = path.join(dir, 'conf');
    delete process.env.TRIVISOR_REMOTE;
    delete process.env.TRIVISOR_TOKEN;
  });
  after(async () => {
    process.env = saved;
    await rm(dir, { recursive: true, force: true });
  });

  test('no file: only the local remote, the unix socket', () => {
    assert.deepEqual(loadConfig(), { defaultRemote: 'local', remotes: {} });
    assert.ok('socketPath' in remoteOf({}).target);
  });

  test('remotes are kept 0600 in a 0700 directory, and commands find them by name or URL', () => {
    saveConfig({
      defaultRemote: 'prod',
      remotes: { prod: { url: 'https://10.0.0.5:8443', fingerprint: FP, token: 'trv_ci_x', project: 'p1' } },
    });
    assert.equal(statSync(configPath()).mode & 0o777, 0o600);
    assert.equal(statSync(path.dirname(configPath())).mode & 0o777, 0o700);
    const byDefault = remoteOf({});
    assert.deepEqual(byDefault, {
      name: 'prod',
      target: { url: 'https://10.0.0.5:8443', serverFingerprint: FP, token: 'trv_ci_x' },
      project: 'p1',
    });
    assert.equal(remoteOf({ remote: 'https://10.0.0.5:8443' }).name, 'prod');
    assert.equal((remoteOf({ remote: 'prod', token: 'other' }).target as { token?: string }).token, 'other');
    assert.ok('socketPath' in remoteOf({ remote: 'local' }).target);
    assert.throws(() => remoteOf({ remote: 'nosuch' }), /No remote is named nosuch/);
    assert.throws(
      () => remoteOf({ remote: 'https://10.9.9.9:8443' }),
      /is not a remote yet: add it with trivisor remote add NAME/,
    );
  });

  test('a broken file is one clear line', () => {
    writeFileSync(configPath(), 'remotes: [1, 2');
    assert.throws(() => loadConfig(), /config\.yml is not valid YAML/);
    writeFileSync(configPath(), 'remotes:\n  prod:\n    url: https://h\n');
    assert.throws(() => loadConfig(), /remote prod needs url and fingerprint/);
  });
});
