import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { validateConfig } from './config-keys.ts';
import { checkGuestPath, formatInjectedFile, injectedFiles, parseInjectedFile } from './guest-files.ts';

const host = { memoryBytes: 2 ** 34, cpus: 4 };

describe('guest files', () => {
  test('checkGuestPath takes absolute normalized file paths only', () => {
    assert.equal(checkGuestPath('/etc/motd'), '/etc/motd');
    for (const bad of ['', 'etc/motd', '/', '/etc/', '/etc/../x', '/etc//x', '/a/./b', '/a\nb']) {
      assert.throws(() => checkGuestPath(bad), { code: 'InvalidArgument' }, bad);
    }
  });

  test('an injected file round-trips through its config value, with defaults', () => {
    const value = formatInjectedFile({ mode: 0o600, uid: 1000, gid: 100, content: Buffer.from([0, 255]) });
    assert.equal(value, 'mode=0600,uid=1000,gid=100,content=AP8=');
    assert.deepEqual(parseInjectedFile('files./root/.ssh/authorized_keys', value), {
      path: '/root/.ssh/authorized_keys',
      mode: 0o600,
      uid: 1000,
      gid: 100,
      content: Buffer.from([0, 255]),
    });
    const plain = parseInjectedFile('files./etc/motd', 'content=aGk=');
    assert.deepEqual([plain.mode, plain.uid, plain.gid, plain.content.toString()], [0o644, 0, 0, 'hi']);
  });

  test('validateConfig refuses malformed files.* keys with a clear reason', () => {
    assert.deepEqual(validateConfig({ 'files./etc/motd': 'content=aGk=' }, host), {
      'files./etc/motd': 'content=aGk=',
    });
    const cases: Array<[string, string, RegExp]> = [
      ['files.etc/motd', 'content=', /not absolute/],
      ['files./proc/x', 'content=', /cannot be injected/],
      ['files./etc/motd', 'mode=999,content=', /octal/],
      ['files./etc/motd', 'content=***', /base64/],
      ['files./etc/motd', 'mode=0644', /content=BASE64/],
      ['files./etc/motd', 'owner=1,content=', /unknown field/],
      ['files./etc/motd', `content=${Buffer.alloc(70_000).toString('base64')}`, /KiB/],
    ];
    for (const [key, value, message] of cases) {
      assert.throws(() => validateConfig({ [key]: value }, host), { code: 'InvalidArgument', message }, key);
    }
  });

  test('injectedFiles bounds the count and the total size', () => {
    const many = Object.fromEntries(Array.from({ length: 65 }, (_, i) => [`files./f${i}`, 'content=']));
    assert.throws(() => injectedFiles(many), /at most 64/);
    const big = Buffer.alloc(60_000).toString('base64');
    const heavy = Object.fromEntries(Array.from({ length: 5 }, (_, i) => [`files./f${i}`, `content=${big}`]));
    assert.throws(() => injectedFiles(heavy), /add up to/);
    assert.deepEqual(
      injectedFiles({ 'files./b': 'content=', 'files./a': 'content=', 'user.x': 'y' }).map((f) => f.path),
      ['/a', '/b'],
    );
  });
});
