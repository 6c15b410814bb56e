import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { completeWords, globalsOf, type NameKind } from './completion.ts';
import { commandAt, HELP_EXAMPLES } from './help-examples.ts';
import { buildProgram } from './main.ts';
import { renderManPages, writeManPages } from './man-pages.ts';

const NAMES: Record<NameKind, string[]> = {
  guest: ['web1', 'db1'],
  network: ['lab'],
  pool: ['default', 'fast'],
  image: ['busybox', 'debian/bookworm'],
  project: ['default', 'team1'],
  remote: ['local', 'prod'],
};
const asked: NameKind[] = [];
const complete = (line: string) => {
  const words = line.split(' ');
  return completeWords(buildProgram(), words, async (kind) => {
    asked.push(kind);
    return NAMES[kind];
  });
};

describe('shell completion', () => {
  test('commands, then subcommands, from the CLI’s own definitions; the hidden __complete is not offered', async () => {
    const top = await complete('');
    for (const c of ['launch', 'list', 'exec', 'network', 'storage', 'completion'])
      assert.ok(top.includes(c), c);
    assert.ok(!top.includes('__complete'));
    assert.deepEqual((await complete('storage volume ')).sort(), (await complete('storage volume x')).sort());
    assert.ok((await complete('network ')).includes('attach'));
  });

  test('guest, network, pool, image and project names where the arguments take them', async () => {
    assert.deepEqual(await complete('start '), NAMES.guest);
    assert.deepEqual(await complete('start web1 '), NAMES.guest, 'start takes many names');
    assert.deepEqual(await complete('exec '), NAMES.guest);
    assert.deepEqual(await complete('snapshot create '), NAMES.guest);
    assert.deepEqual(await complete('network attach '), NAMES.network);
    assert.deepEqual(await complete('network attach lab '), NAMES.guest);
    assert.deepEqual(await complete('network info '), NAMES.network);
    assert.deepEqual(await complete('storage info '), NAMES.pool);
    assert.deepEqual(await complete('storage volume list '), NAMES.pool);
    assert.deepEqual(await complete('launch '), NAMES.image);
    assert.deepEqual(await complete('image delete '), NAMES.image);
    assert.deepEqual(await complete('project info '), NAMES.project);
    assert.deepEqual(await complete('copy '), NAMES.guest);
  });

  test('option values: choices, pools, projects and remotes; nothing for a new name or after --', async () => {
    assert.deepEqual(await complete('launch -m '), ['ct', 'pvm', 'vm']);
    assert.deepEqual(await complete('launch busybox x --storage '), NAMES.pool);
    assert.deepEqual(await complete('--project '), NAMES.project);
    assert.deepEqual(await complete('list --remote '), NAMES.remote);
    assert.deepEqual(await complete('launch busybox '), [], "the new guest's name is not one that exists");
    assert.deepEqual(await complete('network create '), []);
    assert.deepEqual(await complete('exec web1 -- '), [], "the guest's command is not ours to complete");
    const options = await complete('launch --');
    for (const o of ['--model', '--storage', '--network', '--project', '--remote', '--help'])
      assert.ok(options.includes(o), o);
  });

  test('the completing command line names the remote and project to ask', () => {
    assert.deepEqual(globalsOf(['--remote', 'prod', 'list', '--project=team1', '']), {
      remote: 'prod',
      project: 'team1',
    });
  });

  test('bash: the script from trivisor completion bash completes a command', () => {
    const bin = path.resolve(import.meta.dirname, '../../bin');
    const r = spawnSync(
      'bash',
      [
        '-c',
        // biome-ignore lint/suspicious/noTemplateCurlyInString: bash's ${…}, not a template
        'source <(trivisor completion bash) && COMP_WORDS=(trivisor net) COMP_CWORD=1 && _trivisor && printf "%s\\n" "${COMPREPLY[@]}"',
      ],
      { encoding: 'utf8', env: { ...process.env, PATH: `${bin}:${process.env.PATH}` } },
    );
    assert.equal(r.stderr, '');
    assert.equal(r.stdout, 'network\n');
  });
});

describe('--help examples and man pages', () => {
  test('every command with examples exists, and its --help shows them', () => {
    const program = buildProgram();
    for (const [p, examples] of Object.entries(HELP_EXAMPLES)) {
      const c = commandAt(program, p);
      assert.ok(c, `no command ${JSON.stringify(p)}`);
      if (examples.length === 0) continue;
      let help = '';
      c.configureOutput({ writeOut: (s) => (help += s) });
      c.outputHelp();
      assert.match(help, /\nExamples:\n/, p);
      for (const [command] of examples) assert.ok(help.includes(command), `${p}: ${command}`);
    }
  });

  test('man pages for the program and every top-level command, which man renders without a warning', async () => {
    const program = buildProgram();
    const pages = renderManPages(program, { version: '0.1.0', date: '2026-12-04' });
    const top = program.commands
      .filter((c) => c.name() !== '__complete')
      .map((c) => `trivisor-${c.name()}.1`);
    assert.deepEqual([...pages.keys()].sort(), ['trivisor.1', ...top].sort());
    assert.match(
      pages.get('trivisor-network.1')!,
      /^\.B trivisor network attach \[options\] <network> <guest> \[nic\]$/m,
    );
    assert.match(pages.get('trivisor-launch.1')!, /trivisor launch busybox p1 \\-\\-model pvm/);
    const dir = mkdtempSync(path.join(tmpdir(), 'trivisor-man-'));
    try {
      await writeManPages(program, dir, { version: '0.1.0', date: '2026-12-04' });
      for (const name of ['trivisor.1', 'trivisor-network.1', 'trivisor-storage.1']) {
        const file = path.join(dir, name);
        // groff is what man runs; -ww: every warning.
        const r = spawnSync('groff', ['-man', '-Tutf8', '-ww', '-z', file], { encoding: 'utf8' });
        assert.equal(r.error, undefined, 'groff (groff-base, with man-db) is needed');
        assert.equal(r.stderr, '', name);
        assert.ok(readFileSync(file, 'utf8').startsWith('.TH '));
      }
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
