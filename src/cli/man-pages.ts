import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import type { Command, Option } from 'commander';
import { HELP_EXAMPLES } from './help-examples.ts';

/*
 * Man pages generated from the CLI's own commander definitions (decision 0030): trivisor(1)
 * with the global options and every command, and trivisor-COMMAND(1) for each top-level command
 * with its subcommands, their arguments, options and examples. The Debian package builds them
 * (`node src/cli/man-pages.ts DIR`), so they never fall behind the CLI.
 */

/** roff-escaped text: backslashes, and a leading dot or quote that roff would take as a request. */
const esc = (text: string) =>
  text
    .replaceAll('\\', '\\e')
    .replaceAll('-', '\\-')
    .replace(/^([.'])/gm, '\\&$1')
    // Beyond ASCII as roff's own escapes, whatever the reader's locale and preprocessor.
    .replace(
      /[^\t\n -~]/gu,
      (ch) => `\\[u${ch.codePointAt(0)!.toString(16).toUpperCase().padStart(4, '0')}]`,
    );

const visible = (c: Command) => !(c as unknown as { _hidden?: boolean })._hidden;

function usageOf(c: Command): string {
  const names: string[] = [];
  for (let p: Command | null = c; p; p = p.parent) names.unshift(p.name());
  return `${names.join(' ')} ${c.usage()}`.trim();
}

function optionsSection(options: readonly Option[]): string[] {
  const out: string[] = [];
  for (const o of options.filter((x) => !x.hidden)) {
    out.push(
      '.TP',
      `.B ${esc(o.flags)}`,
      esc(o.description + (o.argChoices ? ` (${o.argChoices.join(', ')})` : '')),
    );
  }
  return out;
}

function examplesOf(c: Command): string[] {
  const names: string[] = [];
  for (let p: Command | null = c; p?.parent; p = p.parent) names.unshift(p.name());
  const examples = HELP_EXAMPLES[names.join(' ')] ?? [];
  return examples.flatMap(([command, what]) => ['.TP', `.B ${esc(command)}`, esc(what)]);
}

/** The leaf commands under `c` (itself when it has none), depth first. */
function leaves(c: Command): Command[] {
  const subs = c.commands.filter(visible);
  return subs.length === 0 ? [c] : subs.flatMap(leaves);
}

const header = (name: string, date: string, version: string) =>
  `.TH ${name.toUpperCase()} 1 "${date}" "trivisor ${version}" "Trivisor"`;

/** Every page by file name (`trivisor.1`, `trivisor-network.1`, …). */
export function renderManPages(
  program: Command,
  options: { version: string; date: string },
): Map<string, string> {
  const pages = new Map<string, string>();
  const top = program.commands.filter(visible);
  const main = [
    header('trivisor', options.date, options.version),
    '.SH NAME',
    `trivisor \\- ${esc(program.description())}`,
    '.SH SYNOPSIS',
    '.B trivisor',
    '[\\fIOPTIONS\\fR] \\fICOMMAND\\fR [\\fIARGUMENTS\\fR]',
    '.SH DESCRIPTION',
    esc(
      'The command line of Trivisor. It talks only to the REST API: the unix socket $TRIVISOR_DIR/trivisor.sock (root only) by default, or a remote over HTTPS. Every failure is one line on standard error and exit code 1.',
    ),
    '.SH OPTIONS',
    ...optionsSection(program.options),
    '.SH COMMANDS',
    ...top.flatMap((c) => ['.TP', `.BR trivisor\\-${esc(c.name())} (1)`, esc(c.description())]),
    '.SH EXAMPLES',
    ...examplesOf(program),
    '.SH ENVIRONMENT',
    '.TP',
    '.B TRIVISOR_DIR',
    esc('State directory of the local daemon (default /var/lib/trivisor).'),
    '.TP',
    '.B TRIVISOR_REMOTE, TRIVISOR_TOKEN, TRIVISOR_PROJECT',
    esc('Defaults of --remote, --token and --project.'),
    '.SH SEE ALSO',
    top.map((c) => `.BR trivisor\\-${esc(c.name())} (1)`).join(',\n'),
  ];
  pages.set('trivisor.1', `${main.join('\n')}\n`);
  for (const c of top) {
    const lines = [
      header(`trivisor-${c.name()}`, options.date, options.version),
      '.SH NAME',
      `trivisor\\-${esc(c.name())} \\- ${esc(c.description())}`,
      '.SH SYNOPSIS',
      ...leaves(c).flatMap((l) => ['.nf', `.B ${esc(usageOf(l))}`, '.fi']),
    ];
    for (const l of leaves(c)) {
      if (l !== c)
        lines.push(
          `.SH ${esc(usageOf(l).split(' [')[0]!.split(' <')[0]!.toUpperCase())}`,
          esc(l.description()),
        );
      else lines.push('.SH DESCRIPTION', esc(l.description()));
      const args = l.registeredArguments.filter((a) => a.description);
      if (args.length > 0) {
        lines.push('.PP', 'Arguments:');
        for (const a of args) lines.push('.TP', `.I ${esc(a.name())}`, esc(a.description));
      }
      if (l.options.some((o) => !o.hidden)) lines.push('.PP', 'Options:', ...optionsSection(l.options));
      const examples = examplesOf(l);
      if (examples.length > 0) lines.push('.PP', 'Examples:', ...examples);
    }
    const examples = c.commands.length > 0 ? examplesOf(c) : [];
    if (examples.length > 0) lines.push('.SH EXAMPLES', ...examples);
    lines.push('.SH SEE ALSO', '.BR trivisor (1)');
    pages.set(`trivisor-${c.name()}.1`, `${lines.join('\n')}\n`);
  }
  return pages;
}

/** Writes every page into `dir`. */
export async function writeManPages(
  program: Command,
  dir: string,
  options: { version: string; date: string },
) {
  await mkdir(dir, { recursive: true });
  const pages = renderManPages(program, options);
  for (const [name, text] of pages) await writeFile(path.join(dir, name), text);
  return [...pages.keys()];
}

if (import.meta.main) {
  const dir = process.argv[2];
  if (!dir) {
    process.stderr.write('Error: give the output directory, e.g. node src/cli/man-pages.ts build/man\n');
    process.exit(1);
  }
  const { buildProgram } = await import('./main.ts');
  const { readFileSync } = await import('node:fs');
  const pkg = JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as {
    version: string;
  };
  // SOURCE_DATE_EPOCH (Debian's reproducible builds) dates the pages, else today.
  const epoch = Number(process.env.SOURCE_DATE_EPOCH);
  const date = new Date(Number.isFinite(epoch) && epoch > 0 ? epoch * 1000 : Date.now())
    .toISOString()
    .slice(0, 10);
  const written = await writeManPages(buildProgram(), dir, { version: pkg.version, date });
  process.stdout.write(`Wrote ${written.length} man pages into ${dir}\n`);
}
