import { mkdirSync, readFileSync, renameSync, unlinkSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import type { Token } from './types.ts';

/**
 * What the HA agent and its member's daemon tell each other (decision 0052), through files in
 * the state directory that only root can write: the agent's state, rewritten at every look, and
 * one start permit per HA guest the agent wants running here. The daemon starts an HA guest only
 * while the agent is live under the token its permit names: so a daemon never starts one the
 * agent has not asked for, or after the agent fenced (decision 0044's rule that only a live LRM,
 * for a record naming its token, starts a guest).
 */
export interface HaAgentState {
  pid: number;
  member: string;
  /** The token of the lease while live; absent while fenced or before the first grant. */
  token?: Token;
  /** Wall-clock ms until which the agent is live on its own clock, counted from its last confirmed renewal. */
  liveUntil: number;
  /** Wall-clock ms of this write: a state older than a few looks means the agent stopped looking. */
  at: number;
}

/** A permit to start one HA guest here, under the agent's token. */
export interface HaStartPermit {
  token: Token;
  at: number;
}

/** A state older than this is not trusted: the agent looks every 500 ms. */
export const AGENT_STATE_STALE_MS = 2000;

export function haPaths(stateDir: string) {
  const dir = join(stateDir, 'ha');
  return {
    dir,
    state: join(dir, 'agent.json'),
    pid: join(dir, 'agent.pid'),
    log: join(dir, 'agent.log'),
    permits: join(dir, 'permits'),
    permit: (guest: string) => join(dir, 'permits', guest),
  };
}

function writeAtomic(path: string, text: string): void {
  const tmp = `${path}.tmp-${process.pid}`;
  writeFileSync(tmp, text, { mode: 0o600 });
  renameSync(tmp, path);
}

function readJson<T>(path: string): T | undefined {
  try {
    return JSON.parse(readFileSync(path, 'utf8')) as T;
  } catch {
    return undefined;
  }
}

export function writeAgentState(stateDir: string, state: HaAgentState): void {
  const p = haPaths(stateDir);
  mkdirSync(p.permits, { recursive: true, mode: 0o700 });
  writeAtomic(p.state, `${JSON.stringify(state)}\n`);
}

export function readAgentState(stateDir: string): HaAgentState | undefined {
  return readJson<HaAgentState>(haPaths(stateDir).state);
}

/** The agent's token when it is live now (fresh state, inside its fencing window). */
export function liveAgentToken(state: HaAgentState | undefined, nowMs = Date.now()): Token | undefined {
  if (!state || state.token === undefined) return undefined;
  if (nowMs - state.at > AGENT_STATE_STALE_MS || nowMs >= state.liveUntil) return undefined;
  return state.token;
}

export function writePermit(stateDir: string, guest: string, permit: HaStartPermit): void {
  const p = haPaths(stateDir);
  mkdirSync(p.permits, { recursive: true, mode: 0o700 });
  writeAtomic(p.permit(guest), `${JSON.stringify(permit)}\n`);
}

export function readPermit(stateDir: string, guest: string): HaStartPermit | undefined {
  return readJson<HaStartPermit>(haPaths(stateDir).permit(guest));
}

export function dropPermit(stateDir: string, guest: string): void {
  try {
    unlinkSync(haPaths(stateDir).permit(guest));
  } catch {
    // Not there: nothing to drop.
  }
}

/**
 * Why the daemon may not start HA guest `guest` now, or undefined when it may: the agent is
 * live and its permit names the agent's current token.
 */
export function startRefusal(stateDir: string, guest: string, nowMs = Date.now()): string | undefined {
  const token = liveAgentToken(readAgentState(stateDir), nowMs);
  if (token === undefined) return "this member's HA agent is not live";
  const permit = readPermit(stateDir, guest);
  if (permit?.token !== token) return 'waiting for the HA agent to start it';
  return undefined;
}
