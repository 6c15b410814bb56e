import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, test } from 'node:test';
import { DEFAULT_DEBIAN_MIRROR, debootstrapProgress, hostDebianMirror } from './debootstrap-image.ts';

describe('debootstrapProgress', () => {
  test('turns I: lines into a percentage that only rises and ends below 100 until the caller finishes', () => {
    const seen: Array<[number, string]> = [];
    const onLine = debootstrapProgress((p, t) => seen.push([p, t]));
    const pkgs = Array.from({ length: 90 }, (_, i) => `pkg${i}`);
    const lines = [
      'I: Retrieving InRelease ',
      'I: Validating Packages ',
      'I: Resolving dependencies of required packages...',
      ...pkgs.flatMap((p) => [`I: Retrieving ${p} 1.0`, `I: Validating ${p} 1.0`]),
      ...pkgs.map((p) => `I: Extracting ${p}...`),
      'I: Unpacking required packages...',
      ...pkgs.map((p) => `I: Unpacking ${p}...`),
      'I: Configuring required packages...',
      ...pkgs.map((p) => `I: Configuring ${p}...`),
      'W: something odd',
      'I: Base system installed successfully.',
    ];
    for (const line of lines) onLine(line);
    const percents = seen.map(([p]) => p);
    for (let i = 1; i < percents.length; i++) assert.ok((percents[i] ?? 0) >= (percents[i - 1] ?? 0));
    assert.equal(percents.at(-1), 98);
    assert.ok((percents[10] ?? 0) > 0);
    assert.equal(seen.at(-1)?.[1], 'Base system installed successfully.');
    assert.ok(seen.some(([p, t]) => t === 'Configuring pkg44...' && p > 80 && p < 90));
  });
});

describe('hostDebianMirror', () => {
  test('reads deb822 and one-line sources, skipping the security archive', async () => {
    const apt = await mkdtemp(join(tmpdir(), 'trivisor-apt-'));
    try {
      assert.equal(await hostDebianMirror(apt), DEFAULT_DEBIAN_MIRROR);
      await mkdir(join(apt, 'sources.list.d'));
      await writeFile(
        join(apt, 'sources.list.d', 'debian.sources'),
        'Types: deb\nURIs: http://security.debian.org/debian-security\nSuites: bookworm-security\n\n' +
          'Types: deb deb-src\nURIs: http://mirror.example/debian/\nSuites: bookworm\nComponents: main\n',
      );
      assert.equal(await hostDebianMirror(apt), 'http://mirror.example/debian');
      await writeFile(
        join(apt, 'sources.list'),
        '# comment\ndeb [arch=amd64] http://other.example/debian bookworm main\n',
      );
      assert.equal(await hostDebianMirror(apt), 'http://other.example/debian');
    } finally {
      await rm(apt, { recursive: true, force: true });
    }
  });
});
