import { failedPrecondition } from '../core/errors.ts';
import type { MemberPowerConfig } from '../core/power-keys.ts';
import type { PowerDriver, PowerDriverDeps, PowerStatus } from './power-driver.ts';

/** How long an administrator's power command may run. */
const COMMAND_TIMEOUT_MS = 120_000;

/**
 * The `command` driver: the administrator's own commands (`member.NAME.power.on`, `.off`, and
 * optionally `.status`, which prints on or off), run through `sh -c` on the member that decides,
 * with the member's name in TRIVISOR_POWER_MEMBER and the action in TRIVISOR_POWER_ACTION. It is
 * how a site plugs in a PDU or a cloud API, and how the tests take a member down and up.
 */
export function createCommandDriver(
  member: string,
  config: MemberPowerConfig,
  deps: PowerDriverDeps,
): PowerDriver {
  const run = async (action: 'on' | 'off' | 'status', command: string | undefined) => {
    if (!command)
      throw failedPrecondition(
        `Member ${member} has no power ${action} command (member.${member}.power.${action})`,
      );
    return deps.runner.run(['sh', '-c', command], {
      env: { TRIVISOR_POWER_MEMBER: member, TRIVISOR_POWER_ACTION: action },
      timeoutMs: COMMAND_TIMEOUT_MS,
    });
  };
  return {
    kind: 'command',
    async powerOn() {
      await run('on', config.on);
    },
    async powerOff() {
      await run('off', config.off);
    },
    async status(): Promise<PowerStatus> {
      if (!config.status) return 'unknown';
      const out = (await run('status', config.status)).stdout.trim().toLowerCase();
      return out === 'on' ? 'on' : out === 'off' ? 'off' : 'unknown';
    },
  };
}
