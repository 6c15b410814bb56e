import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createSimulator, type SimOptions, type Simulator } from './simulator.ts';

/**
 * One scripted scenario of the HA simulator: a cluster, what happens to it and when, and the
 * event log it must give, line for line (Proxmox's ha-manager tests are the same idea: a
 * script of events in, a log out). The invariants are checked after every tick by the
 * simulator itself, so a scenario fails if a guest ever runs twice, whatever its log says.
 */
export interface Scenario {
  title: string;
  cluster: SimOptions;
  script?: (sim: Simulator) => void;
  untilMs: number;
  log: string[];
  /** Checks on the end state beyond the log. */
  after?: (sim: Simulator) => void;
}

/** Plays a scenario and answers its log. */
export function play(s: Scenario): { sim: Simulator; log: string[] } {
  const sim = createSimulator(s.cluster);
  s.script?.(sim);
  const log = sim.run(s.untilMs);
  return { sim, log };
}

/**
 * Registers each scenario as a test. With HA_PRINT=1 each prints its log (as JSON, after a line
 * `@@@ title`) and fails, to write a new scenario's expectation from after reading it.
 */
export function scenarios(list: Scenario[]): void {
  for (const s of list) {
    test(s.title, () => {
      const { sim, log } = play(s);
      if (process.env.HA_PRINT === '1') {
        // Printed to write a new expectation from; never a pass: nothing was checked.
        console.log(`@@@ ${s.title}\n${JSON.stringify(log)}`);
        assert.fail('HA_PRINT=1: the log was printed, not checked');
      }
      assert.deepEqual(log, s.log);
      s.after?.(sim);
    });
  }
}
