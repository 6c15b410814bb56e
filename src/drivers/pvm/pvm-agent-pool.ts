import { type AgentConnection, type AgentLinePaths, connectAgent } from './pvm-agent.ts';

/**
 * The live agent connections of pvm guests by guest name, shared by the pvm
 * driver and the pvm storage (main.ts makes one): a guest's serial line
 * carries one conversation at a time, so a second reader would steal answers.
 */
export type PvmAgentMap = Map<string, Promise<AgentConnection>>;

/** The guest's shared connection, opened (and registered until it closes) when there is none. */
export function pvmAgentOf(
  agents: PvmAgentMap,
  guest: string,
  options: { paths: AgentLinePaths; timeoutMs: number },
): Promise<AgentConnection> {
  let pending = agents.get(guest);
  if (!pending) {
    const made = connectAgent(options.paths, { timeoutMs: options.timeoutMs, guestName: guest });
    pending = made;
    agents.set(guest, made);
    made.then(
      (a) => a.onClose(() => agents.get(guest) === made && agents.delete(guest)),
      () => agents.get(guest) === made && agents.delete(guest),
    );
  }
  return pending;
}

/** Closes and forgets a guest's connection (after a failure the line is in an unknown state). */
export function dropPvmAgent(agents: PvmAgentMap, guest: string): void {
  const pending = agents.get(guest);
  agents.delete(guest);
  pending?.then((a) => a.close()).catch(() => {});
}
