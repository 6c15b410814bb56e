import { readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { CGROUP_ROOT } from './cgroups-v1.ts';

/**
 * The guests of one state dir as their processes, found and killed by their cgroups
 * (`PARENT/NAME`, the same for all three models: drivers/guest-cgroup.ts), with no help from the
 * daemon or the drivers. This is what the HA agent fences with (decision 0052): it must work while
 * the daemon is dead or stuck, and a kill must not wait for a guest's own shutdown.
 */
const HIERARCHIES = ['pids', 'memory', 'cpu,cpuacct', 'cpu', 'freezer'];

async function procsOf(dir: string): Promise<number[]> {
  const pids: number[] = [];
  const walk = async (d: string) => {
    try {
      for (const line of (await readFile(join(d, 'cgroup.procs'), 'utf8')).split('\n')) {
        const pid = Number(line);
        if (Number.isInteger(pid) && pid > 0) pids.push(pid);
      }
      for (const e of await readdir(d, { withFileTypes: true }))
        if (e.isDirectory()) await walk(join(d, e.name));
    } catch {
      // Gone meanwhile: nothing of it runs.
    }
  };
  await walk(dir);
  return pids;
}

async function hierarchies(root: string): Promise<string[]> {
  const out: string[] = [];
  for (const h of HIERARCHIES) {
    try {
      await readdir(join(root, h));
      out.push(join(root, h));
    } catch {
      // Not mounted here.
    }
  }
  return out;
}

/**
 * Names of the guests under `parent` that have at least one process. With `only`, just those
 * guests' cgroups are read (the HA agent asks about its HA guests every half second: reading
 * every guest's cgroups was O(guests on the host) each time, with no HA guest at all).
 */
export async function runningGuests(
  parent: string,
  options: { root?: string; only?: ReadonlySet<string> } = {},
): Promise<Set<string>> {
  const found = new Set<string>();
  if (options.only?.size === 0) return found;
  for (const h of await hierarchies(options.root ?? CGROUP_ROOT)) {
    let names: string[];
    if (options.only) names = [...options.only];
    else {
      try {
        names = (await readdir(join(h, parent), { withFileTypes: true }))
          .filter((e) => e.isDirectory())
          .map((e) => e.name);
      } catch {
        continue;
      }
    }
    for (const name of names) {
      if (found.has(name)) continue;
      if ((await procsOf(join(h, parent, name))).length > 0) found.add(name);
    }
  }
  return found;
}

/**
 * SIGKILLs every process of guest `name` under `parent`, frozen first where the freezer is
 * mounted so that nothing forks away meanwhile; resolves once none is left (or after `timeoutMs`,
 * with the pids still there).
 */
export async function killGuest(
  parent: string,
  name: string,
  options: { root?: string; timeoutMs?: number } = {},
): Promise<number[]> {
  const root = options.root ?? CGROUP_ROOT;
  const deadline = Date.now() + (options.timeoutMs ?? 5000);
  const freezer = join(root, 'freezer', parent, name, 'freezer.state');
  const dirs = (await hierarchies(root)).map((h) => join(h, parent, name));
  const frozen = await writeFile(freezer, 'FROZEN').then(
    () => true,
    () => false,
  );
  for (;;) {
    const pids = new Set<number>();
    for (const d of dirs) for (const p of await procsOf(d)) pids.add(p);
    for (const p of pids) {
      try {
        process.kill(p, 'SIGKILL');
      } catch {
        // Already gone.
      }
    }
    // A frozen task dies only once thawed; the freezer kept it from forking until the kill landed.
    if (frozen) await writeFile(freezer, 'THAWED').catch(() => {});
    if (pids.size === 0 || Date.now() > deadline) return [...pids];
    await new Promise((r) => setTimeout(r, 50));
  }
}
