import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { open } from 'node:fs/promises';
import path from 'node:path';
import type { ProcessIdentity } from '../../core/types.ts';
import type { Logger } from '../../host/logger.ts';
import { isSameProcess, readProcessIdentity } from '../../host/proc-stat.ts';
import type { ProcessRunner } from '../../host/runner.ts';
import { haPaths } from './ha-files.ts';

/**
 * The daemon keeps its member's HA agent running (decision 0052): at start, and at every
 * `checkEveryMs`, it starts the agent when its pid file names no live agent. The agent runs in a
 * session of its own, writing to a file, so that it outlives the daemon (even one killed with -9),
 * as guests and etcd do; a daemon that comes back finds it and leaves it be.
 */
export interface AgentSupervisor {
  stop(): void;
}

const AGENT_ENTRY = path.resolve(import.meta.dirname, '..', '..', 'ha-agent.ts');

async function running(stateDir: string): Promise<ProcessIdentity | undefined> {
  try {
    const id = JSON.parse(readFileSync(haPaths(stateDir).pid, 'utf8')) as ProcessIdentity;
    return (await isSameProcess(id)) ? id : undefined;
  } catch {
    return undefined;
  }
}

export async function superviseHaAgent(options: {
  stateDir: string;
  runner: ProcessRunner;
  log: Logger;
  checkEveryMs?: number;
  /**
   * Where the agent reaches etcd: this member's own etcd member when it runs one. A member cut
   * off then gets no answer (its etcd has no quorum) and fences, as it must; a member that is not
   * cut off gets its answers from its own etcd at once, never waiting on a lost member's endpoint
   * as a client of every member would (it fenced for that under a partition in the HA test).
   */
  etcdEndpoints?: string[];
  /**
   * The agent is the service manager's (`TRIVISOR_HA_AGENT=systemd`: the unit
   * `trivisor-ha-agent.service` runs it, restarts it and watches it): the daemon starts none.
   */
  external?: boolean;
}): Promise<AgentSupervisor> {
  const { stateDir, runner, log } = options;
  if (options.external) {
    log.info(
      { running: (await running(stateDir))?.pid ?? null },
      'HA agent: run by systemd (trivisor-ha-agent.service), not by the daemon',
    );
    return { stop: () => {} };
  }
  const paths = haPaths(stateDir);
  const ensure = async () => {
    if (await running(stateDir)) return;
    mkdirSync(paths.dir, { recursive: true, mode: 0o700 });
    const out = await open(paths.log, 'a', 0o600);
    try {
      const child = runner.spawn([process.execPath, ...process.execArgv, AGENT_ENTRY, stateDir], {
        stdio: ['ignore', out.fd, out.fd],
        detached: true,
        ...(options.etcdEndpoints && {
          env: { TRIVISOR_HA_ETCD_ENDPOINTS: options.etcdEndpoints.join(',') },
        }),
      });
      child.on('error', (e) => log.error({ err: e.message }, 'cannot run the HA agent'));
      child.unref();
      if (child.pid === undefined) return;
      const id = await readProcessIdentity(child.pid);
      if (id) writeFileSync(paths.pid, `${JSON.stringify(id)}\n`, { mode: 0o600 });
      log.info({ pid: child.pid }, 'HA agent started');
    } finally {
      await out.close();
    }
  };
  await ensure();
  const timer = setInterval(() => {
    ensure().catch((e: unknown) => log.error({ err: String(e) }, 'cannot check the HA agent'));
  }, options.checkEveryMs ?? 5000);
  timer.unref();
  return { stop: () => clearInterval(timer) };
}
