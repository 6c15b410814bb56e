import { configValue } from '../../core/config-keys.ts';
import { failedPrecondition, invalidArgument, isTrivisorError, notSupported } from '../../core/errors.ts';
import { GUEST_FILE_MAX_BYTES } from '../../core/guest-files.ts';
import type { GuestSpec } from '../../core/types.ts';
import { isSameProcess } from '../../host/proc-stat.ts';
import type { QgaClient } from '../../host/qga-client.ts';
import { qgaPullFile, qgaPushFile } from '../../host/qga-files.ts';
import type { ExecSession, GuestDriver } from '../guest-driver.ts';
import { exists, type PvmContext } from './pvm-context.ts';
import { openUmlConsole } from './uml-console.ts';

/** Exec and files through the guest's agent, and its console. */
export function pvmExec(
  c: PvmContext,
): Pick<GuestDriver, 'exec' | 'pushFile' | 'pullFile' | 'attachConsole' | 'consoleLogPath'> {
  const { consoles, pathsOf, dropAgent, agentOf, runningUml } = c;
  /** A running, unfrozen guest whose agent can take file requests. */
  const runningAgent = async (spec: GuestSpec): Promise<void> => {
    await runningUml(spec);
    if (await exists(pathsOf(spec).frozenFile)) {
      throw failedPrecondition(`Guest ${spec.name} is frozen: unfreeze it first.`);
    }
  };

  /** Runs `work` on the guest's agent connection; a connection that stopped answering is dropped. */
  const withAgent = async <T>(spec: GuestSpec, work: (client: QgaClient) => Promise<T>): Promise<T> => {
    const agent = await agentOf(spec, 30_000);
    try {
      return await work(agent.client);
    } catch (e) {
      if (isTrivisorError(e) && e.code === 'Unavailable') dropAgent(spec);
      throw e;
    }
  };

  return {
    async exec(spec, options): Promise<ExecSession> {
      await runningUml(spec);
      if (options.command.length === 0)
        throw invalidArgument('The command to run is empty: give at least a program.');
      if (options.tty) {
        throw notSupported('`vm` and `pvm` guests have no terminal exec yet: run without -t');
      }
      try {
        const agent = await agentOf(spec, 30_000);
        return await agent.exec(options, configValue.environment(spec.config));
      } catch (e) {
        if (!isTrivisorError(e) || e.code !== 'NotSupported') dropAgent(spec);
        throw e;
      }
    },

    async pushFile(spec, options) {
      await runningAgent(spec);
      await withAgent(spec, (client) => qgaPushFile(client, { ...options, guest: spec.name }));
    },

    async pullFile(spec, path) {
      await runningAgent(spec);
      return withAgent(spec, (client) =>
        qgaPullFile(client, path, { maxBytes: GUEST_FILE_MAX_BYTES, guest: spec.name }),
      );
    },

    async attachConsole(spec) {
      const identity = await runningUml(spec);
      const p = pathsOf(spec);
      return consoles.claim(spec.name, () =>
        openUmlConsole({
          input: p.consoleIn,
          log: p.consoleLog,
          alive: () => isSameProcess(identity),
          guestName: spec.name,
        }),
      );
    },

    consoleLogPath(spec) {
      return pathsOf(spec).consoleLog;
    },
  };
}
