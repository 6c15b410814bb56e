import { configValue } from '../../core/config-keys.ts';
import { failedPrecondition, invalidArgument } from '../../core/errors.ts';
import { GUEST_FILE_MAX_BYTES } from '../../core/guest-files.ts';
import { qgaPullFile, qgaPushFile } from '../../host/qga-files.ts';
import type { ExecSession, GuestDriver } from '../guest-driver.ts';
import { AGENT_FILE_TIMEOUT_MS, OWN_TOOLS, type VmContext } from './vm-context.ts';

/** exec and files, through the guest agent (the kit's or the guest OS's own). */
export function createVmExec(c: VmContext): Pick<GuestDriver, 'exec' | 'pushFile' | 'pullFile'> {
  const { pathsOf, agents, runStatus, runningQemu, runningAgent, ownAgent } = c;
  return {
    async exec(spec, execOptions): Promise<ExecSession> {
      await runningQemu(spec);
      if (execOptions.command.length === 0) {
        throw invalidArgument('The command to run is empty: give at least a program.');
      }
      if ((await runStatus(spec)) === 'paused') {
        throw failedPrecondition(`Guest ${spec.name} is frozen: unfreeze it first.`);
      }
      const own = await ownAgent(spec);
      return agents.exec(pathsOf(spec).agentSocket, {
        ...execOptions,
        env: { ...configValue.environment(spec.config), ...execOptions.env },
        ...(own && { busyboxPath: OWN_TOOLS }),
      });
    },
    async pushFile(spec, options) {
      await runningAgent(spec);
      const own = await ownAgent(spec);
      await agents.use(pathsOf(spec).agentSocket, { timeoutMs: AGENT_FILE_TIMEOUT_MS }, (client) =>
        qgaPushFile(client, { ...options, guest: spec.name, ...(own && { tools: OWN_TOOLS }) }),
      );
    },
    async pullFile(spec, path) {
      await runningAgent(spec);
      const own = await ownAgent(spec);
      return agents.use(pathsOf(spec).agentSocket, { timeoutMs: AGENT_FILE_TIMEOUT_MS }, (client) =>
        qgaPullFile(client, path, {
          maxBytes: GUEST_FILE_MAX_BYTES,
          guest: spec.name,
          ...(own && { tools: OWN_TOOLS }),
        }),
      );
    },
  };
}
