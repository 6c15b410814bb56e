import assert from 'node:assert/strict';
import { scenarios } from './scenario-runner.ts';

/**
 * Cold moves (the mover's archive and shared-pool moves) whose source restarts past the
 * hand-over (decision 0089): the source comes back under a new HA token, and its daemon undoes
 * the move from its journal, the HA record given back under the token it holds now, compared on
 * the record and both ends' tokens, so that a CRM decision about the guest meanwhile wins and the
 * guest never runs twice. A source restarted before the hand-over ends the move's mark under the
 * token its agent holds now (decision 0089, amended), compared on the record: the guest runs on it
 * again, unless the CRM gave it to the destination first.
 */
const three = ['h1', 'h2', 'h3'];

scenarios([
  {
    title: 'a cold move completes: the guest stops, is handed over, and starts on the destination',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => sim.at(3000, (w) => w.coldMove('g1', 'h3')),
    untilMs: 10_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 stops g1 and moves it cold to h3 (migration)',
      '5.0 h1 hands g1 over to h3',
      '7.0 h1 sent g1 to h3',
      '7.5 g1 moved to h3: the move is done',
      '8.0 h3 starts g1',
      '10.0 world: h1[] h2[] h3[g1]',
    ],
    after: (sim) => assert.equal(sim.record('g1')?.owner, 'h3'),
  },
  {
    title:
      'the source restarts past the hand-over: its daemon gives the HA record back under its new token and the guest runs on it again, once',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.coldMove('g1', 'h2'));
      sim.at(6000, (w) => w.kill('h1'));
      sim.at(7000, (w) => w.boot('h1'));
    },
    untilMs: 25_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 stops g1 and moves it cold to h2 (migration)',
      '5.0 h1 hands g1 over to h2',
      '6.0 world: h1 dies',
      "6.0 the move of g1 to h2 is left unfinished (handed-over): h1's daemon stopped",
      '7.0 h1 boots',
      '11.0 store: the lease of h1 expired',
      '11.0 h1 lease granted (token 14)',
      '11.0 h1 undoes the move of g1 to h2: g1 is its own again (token 14)',
      '11.0 h1 crm: elected',
      '11.0 h2 crm: another member was elected first',
      '11.0 h3 crm: another member was elected first',
      '11.5 h1 starts g1',
      '25.0 world: h1[g1] h2[] h3[]',
    ],
    after: (sim) => {
      assert.deepEqual(sim.runningOn('g1'), ['h1']);
      assert.equal(sim.record('g1')?.owner, 'h1');
    },
  },
  {
    title:
      "the source restarts past the hand-over while the CRM recovers another member's guests and its own old ones: each guest runs once, the moved one back on its source",
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'g2', on: 'h1' },
        { name: 'g3', on: 'h3' },
      ],
    },
    script: (sim) => {
      sim.at(3000, (w) => w.coldMove('g1', 'h2'));
      sim.at(6000, (w) => w.kill('h1'));
      sim.at(6000, (w) => w.kill('h3'));
      sim.at(7000, (w) => w.boot('h1'));
    },
    untilMs: 25_000,
    log: [
      '1.0 world: h1[g1 g2] h2[] h3[g3]',
      '3.0 h1 stops g1 and moves it cold to h2 (migration)',
      '5.0 h1 hands g1 over to h2',
      '6.0 world: h1 dies',
      '6.0 world: h3 dies',
      "6.0 the move of g1 to h2 is left unfinished (handed-over): h1's daemon stopped",
      '7.0 h1 boots',
      '11.0 store: the lease of h1 expired',
      '11.0 store: the lease of h3 expired',
      '11.0 h1 lease granted (token 17)',
      '11.0 h1 undoes the move of g1 to h2: g1 is its own again (token 17)',
      '11.0 h1 crm: elected',
      '11.0 h2 crm: another member was elected first',
      '11.5 h1 starts g1',
      '12.0 h1 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '12.0 h1 crm: h3 lost (token 7); its HA guests are given to others after the margin (2 s on this clock)',
      '14.0 h1 crm: g2 \u2192 h2 (rev 19; most free memory: 8.0 GiB of 8.0)',
      '14.0 h1 crm: g3 \u2192 h2 (rev 19; most free memory: 7.0 GiB of 8.0)',
      '14.5 h2 starts g2',
      '14.5 h2 starts g3',
      '25.0 world: h1[g1] h2[g2 g3] h3 down[]',
    ],
    after: (sim) => {
      assert.deepEqual(sim.runningOn('g1'), ['h1']);
      assert.equal(sim.runningOn('g2').length, 1);
      assert.equal(sim.runningOn('g3').length, 1);
    },
  },
  {
    title:
      'the source restarts past the hand-over and the destination dies: the destination was never asked to run the guest, so the source takes it back without waiting for HA',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.coldMove('g1', 'h2'));
      sim.at(6000, (w) => w.kill('h1'));
      sim.at(6000, (w) => w.kill('h2'));
      sim.at(7000, (w) => w.boot('h1'));
    },
    untilMs: 30_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 stops g1 and moves it cold to h2 (migration)',
      '5.0 h1 hands g1 over to h2',
      '6.0 world: h1 dies',
      '6.0 world: h2 dies',
      "6.0 the move of g1 to h2 is left unfinished (handed-over): h1's daemon stopped",
      '7.0 h1 boots',
      '11.0 store: the lease of h1 expired',
      '11.0 store: the lease of h2 expired',
      '11.0 h1 lease granted (token 15)',
      '11.0 h1 undoes the move of g1 to h2: g1 is its own again (token 15)',
      '11.0 h1 crm: elected',
      '11.0 h3 crm: another member was elected first',
      '11.5 h1 starts g1',
      '30.0 world: h1[g1] h2 down[] h3[]',
    ],
    after: (sim) => assert.deepEqual(sim.runningOn('g1'), ['h1']),
  },
  {
    title:
      'the source restarts once the data was sent: its daemon finishes the move and the guest runs on the destination',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.coldMove('g1', 'h2'));
      sim.at(7000, (w) => w.killDaemon('h1'), 'race');
      sim.at(7500, (w) => w.fence('h1'));
      sim.at(9000, (w) => w.startDaemon('h1'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 stops g1 and moves it cold to h2 (migration)',
      '5.0 h1 hands g1 over to h2',
      '7.0 h1 sent g1 to h2',
      '7.0 world: the daemon of h1 is killed',
      '7.5 world: the HA agent of h1 is asked to fence',
      '7.5 h1 fenced: no HA guest ran here',
      "7.5 the move of g1 to h2 is left unfinished (sent): h1's daemon stopped",
      // h1's lease is given up: h2 has the whole guest and starts it (decision 0108).
      '7.5 h2 starts g1, moved here: its source h1 was lost before it did',
      '8.0 h1 lease granted (token 14)',
      '8.0 h2 starts g1',
      '9.0 world: the daemon of h1 starts',
      '9.0 g1 moved to h2: the move is done',
      '9.0 h1 crm: gives up its election of an earlier lease',
      '10.0 h1 crm: elected',
      '10.0 h2 crm: another member was elected first',
      '10.0 h3 crm: another member was elected first',
      '20.0 world: h1[] h2[g1] h3[]',
    ],
    after: (sim) => {
      assert.deepEqual(sim.runningOn('g1'), ['h2']);
      assert.equal(sim.record('g1')?.owner, 'h2');
    },
  },
  {
    title:
      "the source's agent fences and its daemon restarts past the hand-over: the record goes back under the agent's new lease",
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.coldMove('g1', 'h2'));
      sim.at(5500, (w) => w.killDaemon('h1'));
      sim.at(5500, (w) => w.fence('h1'));
      sim.at(8000, (w) => w.startDaemon('h1'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 stops g1 and moves it cold to h2 (migration)',
      '5.0 h1 hands g1 over to h2',
      '5.5 world: the daemon of h1 is killed',
      '5.5 world: the HA agent of h1 is asked to fence',
      '5.5 h1 fenced: no HA guest ran here',
      "5.5 the move of g1 to h2 is left unfinished (handed-over): h1's daemon stopped",
      '6.0 h1 lease granted (token 13)',
      '8.0 world: the daemon of h1 starts',
      '8.0 h1 undoes the move of g1 to h2: g1 is its own again (token 13)',
      '8.0 h1 crm: gives up its election of an earlier lease',
      '8.5 h1 starts g1',
      '9.0 h1 crm: elected',
      '9.0 h2 crm: another member was elected first',
      '9.0 h3 crm: another member was elected first',
      '20.0 world: h1[g1] h2[] h3[]',
    ],
    after: (sim) => {
      assert.deepEqual(sim.runningOn('g1'), ['h1']);
      assert.equal(sim.record('g1')?.owner, 'h1');
    },
  },
  {
    title:
      'the source restarts before the hand-over: its daemon ends the move under its new token and the guest runs on it again, once',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.coldMove('g1', 'h2'));
      sim.at(4000, (w) => w.kill('h1'));
      sim.at(4500, (w) => w.boot('h1'));
    },
    untilMs: 25_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 stops g1 and moves it cold to h2 (migration)',
      '4.0 world: h1 dies',
      "4.0 the move of g1 to h2 is left unfinished (started): h1's daemon stopped",
      '4.5 h1 boots',
      '9.0 store: the lease of h1 expired',
      '9.0 h1 lease granted (token 13)',
      '9.0 h1 undoes the move of g1 to h2, not handed over: g1 is its own again (token 13)',
      '9.0 h1 crm: elected',
      '9.0 h2 crm: another member was elected first',
      '9.0 h3 crm: another member was elected first',
      '9.5 h1 starts g1',
      '25.0 world: h1[g1] h2[] h3[]',
    ],
    after: (sim) => {
      assert.deepEqual(sim.runningOn('g1'), ['h1']);
      assert.equal(sim.record('g1')?.owner, 'h1');
      assert.equal(sim.record('g1')?.moving, undefined);
      assert.deepEqual(sim.coldMovesLeft(), []);
    },
  },
  {
    title:
      "the source's agent fences and its daemon restarts before the hand-over: the move ends under the agent's new lease and the guest runs on the source again",
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.coldMove('g1', 'h2'));
      sim.at(4000, (w) => w.killDaemon('h1'));
      sim.at(4000, (w) => w.fence('h1'));
      sim.at(6000, (w) => w.startDaemon('h1'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 stops g1 and moves it cold to h2 (migration)',
      '4.0 world: the daemon of h1 is killed',
      '4.0 world: the HA agent of h1 is asked to fence',
      '4.0 h1 fenced: no HA guest ran here',
      '4.0 h1 lease granted (token 12)',
      "4.0 the move of g1 to h2 is left unfinished (started): h1's daemon stopped",
      '6.0 world: the daemon of h1 starts',
      '6.0 h1 undoes the move of g1 to h2, not handed over: g1 is its own again (token 12)',
      '6.0 h1 crm: gives up its election of an earlier lease',
      '6.5 h1 starts g1',
      '7.0 h1 crm: elected',
      '7.0 h2 crm: another member was elected first',
      '7.0 h3 crm: another member was elected first',
      '20.0 world: h1[g1] h2[] h3[]',
    ],
    after: (sim) => {
      assert.deepEqual(sim.runningOn('g1'), ['h1']);
      assert.equal(sim.record('g1')?.owner, 'h1');
      assert.deepEqual(sim.coldMovesLeft(), []);
    },
  },
  {
    title:
      'the source comes back before the hand-over only after the CRM gave the guest to the destination: its daemon leaves it to HA, and it runs once, there',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.coldMove('g1', 'h2'));
      sim.at(4000, (w) => w.kill('h1'));
      sim.at(16_000, (w) => w.boot('h1'));
    },
    untilMs: 40_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 stops g1 and moves it cold to h2 (migration)',
      '4.0 world: h1 dies',
      "4.0 the move of g1 to h2 is left unfinished (started): h1's daemon stopped",
      '9.0 store: the lease of h1 expired',
      '9.0 h2 crm: elected',
      '9.0 h3 crm: another member was elected first',
      '10.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '12.0 h2 crm: g1 → h2, the destination of its move (rev 13)',
      '12.5 h2 starts g1',
      '16.0 h1 boots',
      '16.0 h1 lease granted (token 15)',
      "16.0 h1 leaves g1 to HA: HA ended guest g1's move to h2 meanwhile (its record names h2)",
      '40.0 world: h1[] h2[g1] h3[]',
    ],
    after: (sim) => {
      assert.deepEqual(sim.runningOn('g1'), ['h2']);
      // The move stopped it through its desired state; the CRM wanted it started again (decision 0108).
      assert.equal(sim.record('g1')?.want, 'started');
      assert.equal(sim.record('g1')?.moving, undefined);
      assert.deepEqual(sim.coldMovesLeft(), []);
    },
  },
  {
    title:
      'the source is lost before the hand-over while the destination is lost too: the CRM places the guest the move stopped on a third member, started (decision 0108)',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.coldMove('g1', 'h2'));
      sim.at(4000, (w) => w.kill('h1'));
      sim.at(4000, (w) => w.kill('h2'));
    },
    untilMs: 30_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 stops g1 and moves it cold to h2 (migration)',
      '4.0 world: h1 dies',
      '4.0 world: h2 dies',
      "4.0 the move of g1 to h2 is left unfinished (started): h1's daemon stopped",
      '9.0 store: the lease of h1 expired',
      '9.0 store: the lease of h2 expired',
      '9.0 h3 crm: elected',
      '10.0 h3 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '12.0 h3 crm: g1 \u2192 h3 (rev 14; most free memory: 8.0 GiB of 8.0)',
      '12.5 h3 starts g1',
      '30.0 world: h1 down[] h2 down[] h3[g1]',
    ],
    after: (sim) => {
      assert.deepEqual(sim.runningOn('g1'), ['h3']);
      assert.equal(sim.record('g1')?.want, 'started');
    },
  },
  {
    title:
      'the destination is lost before the hand-over: the CRM ends the move, the hand-over is refused, and the source starts the guest the move stopped again (decision 0108)',
    // The archive's writing outlasts the destination's lease and the CRM's margin.
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }], transferMs: 12_000 },
    script: (sim) => {
      sim.at(3000, (w) => w.coldMove('g1', 'h2'));
      sim.at(3500, (w) => w.kill('h2'));
    },
    untilMs: 30_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 stops g1 and moves it cold to h2 (migration)',
      '3.5 world: h2 dies',
      '9.0 store: the lease of h2 expired',
      '9.0 h1 crm: h2 lost (token 6); its HA guests are given to others after the margin (2 s on this clock)',
      '11.0 h1 crm: g1 stays on h1: the destination of its move, h2, was lost',
      '15.0 h1 cannot hand g1 over to h2: HA ended its move',
      "15.0 h1 keeps g1: HA ended guest g1's move to h2 meanwhile (its record names h1)",
      '15.0 h1 starts g1 again: it is still its own',
      '15.5 h1 starts g1',
      '30.0 world: h1[g1] h2 down[] h3[]',
    ],
    after: (sim) => {
      assert.deepEqual(sim.runningOn('g1'), ['h1']);
      assert.equal(sim.record('g1')?.want, 'started');
    },
  },
  {
    title:
      'the source dies once the destination has the whole archive, before it started the guest there: the destination starts it (decision 0108), once',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.coldMove('g1', 'h2'));
      sim.at(7000, (w) => w.kill('h1'), 'race');
    },
    untilMs: 30_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 stops g1 and moves it cold to h2 (migration)',
      '5.0 h1 hands g1 over to h2',
      '7.0 h1 sent g1 to h2',
      '7.0 world: h1 dies',
      "7.5 the move of g1 to h2 is left unfinished (sent): h1's daemon stopped",
      '13.0 store: the lease of h1 expired',
      '13.0 h2 starts g1, moved here: its source h1 was lost before it did',
      '13.0 h2 crm: elected',
      '13.0 h3 crm: another member was elected first',
      '13.5 h2 starts g1',
      '30.0 world: h1 down[] h2[g1] h3[]',
    ],
    after: (sim) => {
      assert.deepEqual(sim.runningOn('g1'), ['h2']);
      assert.equal(sim.record('g1')?.want, 'started');
    },
  },
  {
    title:
      "the destination's daemon dies while the archive is sent: the send fails, and the source takes the guest back and starts it again (the destination was never asked to run it)",
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(3000, (w) => w.coldMove('g1', 'h2'));
      sim.at(6000, (w) => w.killDaemon('h2'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '3.0 h1 stops g1 and moves it cold to h2 (migration)',
      '5.0 h1 hands g1 over to h2',
      '6.0 world: the daemon of h2 is killed',
      '7.0 h1 cannot send g1 to h2: its daemon stopped receiving',
      '7.0 h1 undoes the move of g1 to h2: g1 is its own again (token 5)',
      '7.5 h1 starts g1',
      '20.0 world: h1[g1] h2[] h3[]',
    ],
    after: (sim) => {
      assert.deepEqual(sim.runningOn('g1'), ['h1']);
      assert.equal(sim.record('g1')?.owner, 'h1');
      assert.deepEqual(sim.coldMovesLeft(), []);
    },
  },
]);
