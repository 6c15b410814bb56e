import type { Argument, Command, Option } from 'commander';
import { createClient, type TrivisorClient } from '../client/client.ts';
import { LOCAL_REMOTE, loadConfig } from './cli-config.ts';
import { type GlobalOptions, projectFor, remoteOf } from './context.ts';

/*
 * Shell completion (decision 0030): `trivisor completion bash|zsh|fish` prints a script that
 * asks `trivisor __complete WORDS…` for the candidates of the last word, as cobra's `__complete`
 * does for kubectl. Commands and options come from the CLI's own definitions; guest, network,
 * pool, image and project names from the daemon the command line would talk to. Nothing of this
 * runs for any other command: it adds no time to the normal path.
 */

/** What a positional argument or an option's value names. */
export type NameKind = 'guest' | 'network' | 'pool' | 'image' | 'project' | 'remote';

/** Asks the daemon (or the CLI config, for remotes) for the names of a kind; [] when it cannot. */
export type NameLookup = (kind: NameKind) => Promise<string[]>;

/**
 * Kinds by argument or option-value name, where the name alone says it. `name`/`names` is a
 * guest except under the commands in SCOPED_NAMES; `source` only under `copy`.
 */
const KIND_OF: Record<string, NameKind> = {
  guest: 'guest',
  network: 'network',
  pool: 'pool',
  image: 'image',
  ref: 'image',
  refs: 'image',
  project: 'project',
};

/** What `<name>` means under these top-level commands (it is a guest everywhere else). */
const SCOPED_NAMES: Record<string, NameKind | null> = {
  network: 'network',
  storage: 'pool',
  project: 'project',
  remote: 'remote',
  auth: null,
  image: null,
  operation: null,
};

/** Which name an argument of `path` (command names from the top) takes, if any. */
export function kindOfArgument(path: string[], argName: string): NameKind | undefined {
  const top = path[0] ?? '';
  if (argName === 'name' || argName === 'names') {
    // The new guest's name in launch/create/copy/import is not one that exists yet.
    if (['launch', 'create', 'copy', 'import'].includes(top) && path.length === 1) return undefined;
    if (top === 'storage' && path[1] === 'volume') return undefined;
    if (top in SCOPED_NAMES) {
      // The object being created has no name yet.
      if (path.at(-1) === 'create' || path.at(-1) === 'add') return undefined;
      return SCOPED_NAMES[top] ?? undefined;
    }
    return 'guest';
  }
  if (argName === 'source' && top === 'copy') return 'guest';
  return KIND_OF[argName];
}

/** Which name an option's value takes (`--storage <pool>`, `--project <name>`…), if any. */
function kindOfOption(option: Option): NameKind | undefined {
  if (option.long === '--project') return 'project';
  if (option.long === '--remote') return 'remote';
  const value = /<([\w-]+)/.exec(option.flags)?.[1];
  return value ? KIND_OF[value] : undefined;
}

const visible = (c: Command) => !(c as unknown as { _hidden?: boolean })._hidden;
const takesValue = (o: Option) => o.required || o.optional;

/** Options a command accepts: its own and its ancestors' (commander's global options). */
function optionsOf(command: Command): Option[] {
  const out: Option[] = [];
  for (let c: Command | null = command; c; c = c.parent) out.push(...c.options.filter((o) => !o.hidden));
  return out;
}

const findOption = (options: Option[], word: string) =>
  options.find((o) => o.long === word || o.short === word);

/**
 * The candidates for the last of `words` (the command line after `trivisor`, the word being
 * completed last, maybe empty), one per line for the shell scripts to filter by prefix.
 */
export async function completeWords(
  program: Command,
  words: string[],
  lookup: NameLookup,
): Promise<string[]> {
  const current = words.at(-1) ?? '';
  const before = words.slice(0, -1);
  let command = program;
  const path: string[] = [];
  let positional = 0;
  let afterDashes = false;
  for (let i = 0; i < before.length; i++) {
    const word = before[i]!;
    if (afterDashes) {
      positional++;
      continue;
    }
    if (word === '--') {
      afterDashes = true;
      continue;
    }
    if (word.startsWith('-')) {
      const option = findOption(optionsOf(command), word.split('=')[0]!);
      if (option && takesValue(option) && !word.includes('=')) i++;
      continue;
    }
    const sub =
      positional === 0
        ? command.commands.find((c) => c.name() === word || c.aliases().includes(word))
        : undefined;
    if (sub) {
      command = sub;
      path.push(sub.name());
    } else {
      positional++;
    }
  }
  // `exec NAME -- COMMAND…`: what follows the command is the guest's, not ours.
  if (afterDashes) return [];

  const previous = before.at(-1);
  if (previous?.startsWith('-') && !previous.includes('=')) {
    const option = findOption(optionsOf(command), previous);
    if (option && takesValue(option)) {
      if (option.argChoices) return option.argChoices;
      const kind = kindOfOption(option);
      return kind ? lookup(kind) : [];
    }
  }
  if (current.startsWith('-')) {
    return optionsOf(command)
      .flatMap((o) => [o.long, o.short])
      .filter((f): f is string => f !== undefined)
      .concat(['--help']);
  }
  if (positional === 0 && command.commands.length > 0) {
    return command.commands.filter(visible).map((c) => c.name());
  }
  const args = command.registeredArguments as readonly Argument[];
  const arg = args[Math.min(positional, args.length - 1)];
  if (!arg || (positional >= args.length && !arg.variadic)) return [];
  if (arg.argChoices) return arg.argChoices;
  const kind = kindOfArgument(path, arg.name());
  return kind ? lookup(kind) : [];
}

/** `--remote`, `--token` and `--project` as the command line being completed gives them. */
export function globalsOf(words: string[]): GlobalOptions {
  const out: GlobalOptions = {};
  for (let i = 0; i < words.length; i++) {
    const m = /^--(remote|token|project)(?:=(.*))?$/.exec(words[i]!);
    if (!m) continue;
    const value = m[2] ?? words[i + 1];
    if (value !== undefined) out[m[1] as keyof GlobalOptions] = value;
  }
  return out;
}

/** Names of a kind from the daemon a command line would talk to (its --remote and --project). */
export function daemonLookup(globals: GlobalOptions, timeoutMs = 2000): NameLookup {
  return async (kind) => {
    if (kind === 'remote') return [LOCAL_REMOTE, ...Object.keys(loadConfig().remotes)].filter(unique);
    let client: TrivisorClient;
    try {
      const remote = remoteOf(globals);
      client = createClient({ ...remote.target, project: projectFor(globals, remote.project) });
    } catch {
      return [];
    }
    const ask = async (): Promise<string[]> => {
      switch (kind) {
        case 'guest':
          return (await client.listGuests()).map((g) => g.name);
        case 'network':
          return (await client.listNetworks()).map((n) => n.name);
        case 'pool':
          return (await client.listPools()).map((p) => p.name);
        case 'image':
          return (await client.listImages()).flatMap((i) =>
            i.aliases.length > 0 ? i.aliases : [i.fingerprint.slice(0, 12)],
          );
        case 'project':
          return (await client.listProjects()).map((p) => p.name);
      }
    };
    // A daemon that is down or slow must not hang the shell.
    const timeout = new Promise<string[]>((resolve) => setTimeout(() => resolve([]), timeoutMs).unref());
    return Promise.race([ask().catch(() => []), timeout]);
  };
}

const unique = <T>(v: T, i: number, all: T[]) => all.indexOf(v) === i;

/** The completion script of a shell; each asks `trivisor __complete` at every Tab. */
export function completionScript(shell: 'bash' | 'zsh' | 'fish'): string {
  switch (shell) {
    case 'bash':
      return `# bash completion for trivisor (trivisor completion bash)
_trivisor() {
  local IFS=$'\\n' cur=\${COMP_WORDS[COMP_CWORD]}
  # Words as typed, the current one last (maybe empty).
  COMPREPLY=($(compgen -W "$(trivisor __complete -- "\${COMP_WORDS[@]:1:COMP_CWORD}" 2>/dev/null)" -- "$cur"))
}
complete -o default -F _trivisor trivisor
`;
    case 'zsh':
      return `#compdef trivisor
# zsh completion for trivisor (trivisor completion zsh)
_trivisor() {
  local -a candidates
  candidates=("\${(@f)$(trivisor __complete -- "\${(@)words[2,CURRENT]}" 2>/dev/null)}")
  candidates=(\${candidates:#})
  if (( \${#candidates} )); then compadd -a candidates; else _files; fi
}
if [ "\${funcstack[1]}" = "_trivisor" ]; then _trivisor "$@"; else compdef _trivisor trivisor; fi
`;
    case 'fish':
      return `# fish completion for trivisor (trivisor completion fish)
function __trivisor_complete
    set -l words (commandline -opc) (commandline -ct)
    trivisor __complete -- $words[2..-1] 2>/dev/null
end
complete -c trivisor -f -a '(__trivisor_complete)'
`;
  }
}

/** `trivisor completion SHELL` and the hidden `trivisor __complete WORDS…` it calls. */
export function addCompletionCommands(program: Command): void {
  program
    .command('completion')
    .description('Print the shell completion script (bash, zsh or fish)')
    .argument('<shell>', 'bash, zsh or fish')
    .addHelpText(
      'after',
      `
Examples:
  source <(trivisor completion bash)                     # this shell
  trivisor completion bash > /etc/bash_completion.d/trivisor   # every new bash (the package installs it)
  trivisor completion zsh > "\${fpath[1]}/_trivisor"
  trivisor completion fish > ~/.config/fish/completions/trivisor.fish`,
    )
    .action((shell: string) => {
      if (shell !== 'bash' && shell !== 'zsh' && shell !== 'fish') {
        throw new Error(`No completion for ${JSON.stringify(shell)}: give bash, zsh or fish`);
      }
      process.stdout.write(completionScript(shell));
    });
  program
    .command('__complete', { hidden: true })
    .description('Candidates for the last word of a command line (the completion scripts call it after --)')
    .argument('[words...]')
    .helpOption(false)
    .action(async (words: string[]) => {
      const candidates = await completeWords(
        program,
        words.length > 0 ? words : [''],
        daemonLookup(globalsOf(words)),
      );
      process.stdout.write(candidates.length > 0 ? `${candidates.join('\n')}\n` : '');
    });
}
