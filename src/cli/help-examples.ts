import type { Command } from 'commander';

/**
 * Examples shown by `--help` on the main commands and in their man pages (decision 0030), by
 * command path. Kept here rather than in each command's file: the man pages read the same list,
 * and one place shows which commands still lack them.
 */
export const HELP_EXAMPLES: Record<string, Array<[command: string, what: string]>> = {
  '': [
    ['trivisor launch busybox web1', 'create and start a ct guest from the built-in busybox image'],
    ['trivisor exec web1 -- hostname', 'run a command in it'],
    ['trivisor list', 'every guest of the project, with its state and addresses'],
    ['trivisor launch debian/bookworm v1 --model vm', 'the same kind of guest as a QEMU virtual machine'],
    ['source <(trivisor completion bash)', 'Tab completion in this shell'],
  ],
  launch: [
    ['trivisor launch busybox web1', 'a ct guest (the default model)'],
    [
      'trivisor launch busybox p1 --model pvm -c limits.memory=128MiB',
      'a User-Mode Linux guest with 128 MiB',
    ],
    [
      'trivisor launch debian/bookworm v1 --model vm -n lab,ipv4.address=198.18.50.20',
      'a vm on network lab with a fixed address',
    ],
    [
      'trivisor launch busybox db1 --storage fast -c limits.disk=1GiB',
      'on the btrfs pool fast, with a quota',
    ],
  ],
  create: [
    ['trivisor create busybox web2 -c boot.autostart=true', 'a guest that starts with the daemon, not now'],
  ],
  list: [
    ['trivisor list', "the project's guests"],
    ['trivisor list --all-projects --format json', 'every project’s, for a script'],
  ],
  info: [
    ['trivisor info web1', 'state, pid, usage, addresses and warnings of a guest'],
    ['trivisor info --host', 'the engines, their versions and the vm accelerator'],
  ],
  exec: [
    ['trivisor exec web1 -- cat /etc/os-release', 'a command, its output and exit code'],
    ['trivisor exec -t web1 -- sh', 'an interactive shell (ct guests)'],
  ],
  console: [
    ['trivisor console v1', 'the serial console of a vm or pvm guest (Ctrl-a q detaches)'],
    ['trivisor console web1 --show-log', 'what the guest printed'],
  ],
  stop: [['trivisor stop web1 --timeout 10', 'ask its init to power off, kill after 10 s']],
  delete: [['trivisor delete --force web1', 'stop it first if it runs']],
  move: [['trivisor move web1 --target m2', 'to another member: stopped, moved, started there if it ran']],
  'plan consolidate': [
    [
      'trivisor plan consolidate 20110303.csv.gz --host-size cpu=5320',
      'PlanetLab VMs onto hosts of 2 × 2660 MIPS',
    ],
    [
      'trivisor plan consolidate 2013-7.csv.gz --host-size cpu=32,memory=256GiB --replay 2013-8.csv.gz --svg hosts.svg',
      'Bitbrains: planned from July, replayed on August, with a picture of each host',
    ],
    [
      'trivisor plan consolidate servers.csv --host-size cpu=32,memory=256GiB --format json',
      'our CSV, for a script',
    ],
    [
      'trivisor plan consolidate --from-history week --host-size cpu=16,memory=64GiB',
      "this remote's guests, from their metric history of the last week",
    ],
  ],
  'plan advise': [
    [
      'trivisor plan advise --cpu 0.3 --syscalls 200k --memory 512MiB',
      'a Linux workload measured at 200,000 system calls a second',
    ],
    ['trivisor plan advise --os other --cpu 2 --memory 4GiB', 'a workload that needs another kernel'],
    [
      'trivisor plan advise servers.csv --format json',
      'many workloads from a file (docs/advisor-profile.md), for a script',
    ],
  ],
  'config set': [
    ['trivisor config set db1 limits.memory=256MiB limits.cpu=2', 'applied live where the model can'],
  ],
  'snapshot create': [
    ['trivisor snapshot create web1 before-upgrade', 'a consistent snapshot (the guest is frozen for it)'],
  ],
  copy: [['trivisor copy web1 web1-test --start', 'copy-on-write where the pool can']],
  export: [['trivisor export v1 v1.backup --incremental', 'a vm backup that starts an incremental chain']],
  'backup list': [
    [
      'trivisor backup list v1',
      "v1's archives in the daemon's backup directory, each incremental with its parent",
    ],
    [
      'trivisor import --from-backups v1/ARCHIVE v1-restored',
      'restore one of them (an incremental with its chain)',
    ],
  ],
  'network create': [
    [
      'trivisor network create lab ipv4.address=198.18.50.1/24 ipv4.nat=true',
      'a bridge with DHCP, DNS and NAT',
    ],
  ],
  'network attach': [['trivisor network attach lab web1', 'hot-plug a NIC on lab into the running guest']],
  'storage create': [['trivisor storage create fast btrfs size=20GiB', 'a btrfs pool on a 20 GiB loop file']],
  'storage volume create': [
    ['trivisor storage volume create fast disk1 size=2GiB --type block', 'a raw disk for vm and pvm guests'],
  ],
  'image build': [['trivisor image build debian/bookworm', 'debootstrap a Debian image (minbase)']],
  'remote add': [
    [
      'trivisor remote add prod https://10.0.0.5:8443 --token TOKEN',
      'pin its certificate and keep its token',
    ],
  ],
  'project create': [
    ['trivisor project create team1 limits.guests=4 limits.memory=2GiB', 'a project with quotas'],
  ],
  completion: [],
};

/** The command at `path` (names from the top; '' is the program itself), if there is one. */
export function commandAt(program: Command, path: string): Command | undefined {
  let c: Command | undefined = program;
  for (const name of path.split(' ').filter((n) => n !== '')) c = c?.commands.find((s) => s.name() === name);
  return c;
}

/** Adds each command's examples after its `--help`. */
export function addHelpExamples(program: Command): void {
  for (const [path, examples] of Object.entries(HELP_EXAMPLES)) {
    if (examples.length === 0) continue;
    const width = Math.max(...examples.map(([c]) => c.length));
    const text = examples.map(([c, what]) => `  ${c.padEnd(width)}  # ${what}`).join('\n');
    commandAt(program, path)?.addHelpText('after', `\nExamples:\n${text}`);
  }
}
