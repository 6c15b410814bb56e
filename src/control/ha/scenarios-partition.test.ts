import assert from 'node:assert/strict';
import { test } from 'node:test';
import { scenarios } from './scenario-runner.ts';
import { createSimulator, InvariantError } from './simulator.ts';

/** Partitions: a member cut from the store (the majority's side), fully or one way, briefly or for long. */
const three = ['h1', 'h2', 'h3'];

scenarios([
  {
    title:
      'a member cut off (minority) kills its HA guests 3 s after its last confirmed renewal; the majority restarts them after expiry plus the margin',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'g2', on: 'h1' },
        { name: 'g3', on: 'h2' },
      ],
    },
    script: (sim) => sim.at(5000, (w) => w.link('h1', 'down')),
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1 g2] h2[g3] h3[]',
      '5.0 world: the link of h1 is down',
      '7.0 h1 fenced: killed g1, g2',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g1 → h3 (rev 14; most free memory: 8.0 GiB of 8.0)',
      '13.0 h2 crm: g2 → h2 (rev 14; most free memory: 7.0 GiB of 8.0)',
      '13.5 h2 starts g2',
      '13.5 h3 starts g1',
      '20.0 world: h1[] h2[g2 g3] h3[g1]',
    ],
  },
  {
    title: 'a minority member keeps its guest without ha.enabled running: nobody else starts it',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'plain', on: 'h1', ha: false },
      ],
    },
    script: (sim) => sim.at(5000, (w) => w.link('h1', 'down')),
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1 plain] h2[] h3[]',
      '5.0 world: the link of h1 is down',
      '7.0 h1 fenced: killed g1',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g1 → h2 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '13.5 h2 starts g1',
      '20.0 world: h1[plain] h2[g1] h3[]',
    ],
    after: (sim) => assert.deepEqual(sim.runningOn('plain'), ['h1']),
  },
  {
    title: 'a minority member healed after its guests moved takes a new token and starts nothing',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(5000, (w) => w.link('h1', 'down'));
      sim.at(20_000, (w) => w.link('h1', 'up'));
    },
    untilMs: 30_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '5.0 world: the link of h1 is down',
      '7.0 h1 fenced: killed g1',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g1 → h2 (rev 12; most free memory: 8.0 GiB of 8.0)',
      '13.5 h2 starts g1',
      '20.0 world: the link of h1 is up',
      '20.0 h1 lease granted (token 14)',
      '30.0 world: h1[] h2[g1] h3[]',
    ],
  },
  {
    title: 'a cut shorter than the fencing window changes nothing',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(5000, (w) => w.link('h1', 'down'));
      sim.at(6500, (w) => w.link('h1', 'up'));
    },
    untilMs: 15_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '5.0 world: the link of h1 is down',
      '6.5 world: the link of h1 is up',
      '15.0 world: h1[g1] h2[] h3[]',
    ],
  },
  {
    title:
      'a cut longer than the fencing window but shorter than the lease: the member fences, its old lease runs out, and its guest is placed again',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(5000, (w) => w.link('h1', 'down'));
      sim.at(9000, (w) => w.link('h1', 'up'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '5.0 world: the link of h1 is down',
      '7.0 h1 fenced: killed g1',
      '9.0 world: the link of h1 is up',
      '9.0 h1 lease granted (token 11)',
      '9.0 h1 crm: gives up its election of an earlier lease',
      '10.0 h1 crm: elected',
      '10.0 h2 crm: another member was elected first',
      '10.0 h3 crm: another member was elected first',
      '11.0 h1 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h1 crm: g1 → h2 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '13.5 h2 starts g1',
      '20.0 world: h1[] h2[g1] h3[]',
    ],
  },
  {
    title:
      'asymmetric: the member’s renewals reach the store but the answers are lost; it fences, its revoke arrives, and the guest moves',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(5000, (w) => w.link('h1', 'oneway'));
      sim.at(20_000, (w) => w.link('h1', 'up'));
    },
    untilMs: 30_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '5.0 world: the link of h1 is oneway',
      '7.0 h1 fenced: killed g1',
      '7.0 h2 crm: elected',
      '7.0 h3 crm: another member was elected first',
      '8.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '10.0 h2 crm: g1 → h2 (rev 12; most free memory: 8.0 GiB of 8.0)',
      '10.5 h2 starts g1',
      '20.0 world: the link of h1 is up',
      '20.0 h1 lease granted (token 14)',
      '30.0 world: h1[] h2[g1] h3[]',
    ],
  },
  {
    title:
      'asymmetric for long: the member never learns the leases it is granted, so it never looks alive and is given nothing',
    cluster: {
      members: ['h1', 'h2'],
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'g2', on: 'h2', memoryGiB: 6 },
      ],
    },
    script: (sim) => sim.at(5000, (w) => w.link('h1', 'oneway')),
    untilMs: 40_000,
    log: [
      '1.0 world: h1[g1] h2[g2]',
      '5.0 world: the link of h1 is oneway',
      '7.0 h1 fenced: killed g1',
      '7.0 h2 crm: elected',
      '8.0 h2 crm: h1 lost (token 4); its HA guests are given to others after the margin (2 s on this clock)',
      '10.0 h2 crm: g1 → h2 (rev 11; most free memory: 2.0 GiB of 8.0)',
      '10.5 h2 starts g1',
      '40.0 world: h1[] h2[g1 g2]',
    ],
  },
  {
    title:
      'the CRM’s member in the minority: the majority elects another once the key’s lease expires; the old CRM writes nothing',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'g2', on: 'h2' },
      ],
    },
    script: (sim) => {
      sim.at(4000, (w) => w.link('h1', 'down'));
      sim.at(25_000, (w) => w.link('h1', 'up'));
    },
    untilMs: 30_000,
    log: [
      '1.0 world: h1[g1] h2[g2] h3[]',
      '4.0 world: the link of h1 is down',
      '6.0 h1 fenced: killed g1',
      '9.0 store: the lease of h1 expired',
      '9.0 h2 crm: elected',
      '9.0 h3 crm: another member was elected first',
      '10.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '12.0 h2 crm: g1 → h3 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '12.5 h3 starts g1',
      '25.0 world: the link of h1 is up',
      '25.0 h1 lease granted (token 15)',
      '30.0 world: h1[] h2[g2] h3[g1]',
    ],
  },
  {
    title: 'two members of five in the minority: both fence, the three others restart all their HA guests',
    cluster: {
      members: ['h1', 'h2', 'h3', 'h4', 'h5'],
      guests: [
        { name: 'a', on: 'h1', priority: 2 },
        { name: 'b', on: 'h2', priority: 1 },
        { name: 'c', on: 'h2' },
        { name: 'd', on: 'h3' },
      ],
    },
    script: (sim) => {
      sim.at(5000, (w) => w.link('h1', 'down'));
      sim.at(5000, (w) => w.link('h2', 'down'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[a] h2[b c] h3[d] h4[] h5[]',
      '5.0 world: the link of h1 is down',
      '5.0 world: the link of h2 is down',
      '7.0 h1 fenced: killed a',
      '7.0 h2 fenced: killed b, c',
      '10.0 store: the lease of h1 expired',
      '10.0 store: the lease of h2 expired',
      '10.0 h3 crm: elected',
      '10.0 h4 crm: another member was elected first',
      '10.0 h5 crm: another member was elected first',
      '11.0 h3 crm: h1 lost (token 7); its HA guests are given to others after the margin (2 s on this clock)',
      '11.0 h3 crm: h2 lost (token 8); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h3 crm: a → h4 (rev 20; most free memory: 8.0 GiB of 8.0)',
      '13.0 h3 crm: b → h5 (rev 20; most free memory: 8.0 GiB of 8.0)',
      '13.0 h3 crm: c → h3 (rev 20; most free memory: 7.0 GiB of 8.0)',
      '13.5 h3 starts c',
      '13.5 h4 starts a',
      '13.5 h5 starts b',
      '20.0 world: h1[] h2[] h3[c d] h4[a] h5[b]',
    ],
  },
  {
    title: 'a flapping link (1 s down, 1 s up) never fences: renewals between the cuts keep the lease',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      for (let t = 4000; t < 20_000; t += 2000) {
        sim.at(t, (w) => w.link('h1', 'down'));
        sim.at(t + 1000, (w) => w.link('h1', 'up'));
      }
    },
    untilMs: 24_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '4.0 world: the link of h1 is down',
      '5.0 world: the link of h1 is up',
      '6.0 world: the link of h1 is down',
      '7.0 world: the link of h1 is up',
      '8.0 world: the link of h1 is down',
      '9.0 world: the link of h1 is up',
      '10.0 world: the link of h1 is down',
      '11.0 world: the link of h1 is up',
      '12.0 world: the link of h1 is down',
      '13.0 world: the link of h1 is up',
      '14.0 world: the link of h1 is down',
      '15.0 world: the link of h1 is up',
      '16.0 world: the link of h1 is down',
      '17.0 world: the link of h1 is up',
      '18.0 world: the link of h1 is down',
      '19.0 world: the link of h1 is up',
      '24.0 world: h1[g1] h2[] h3[]',
    ],
  },
  {
    title:
      'a flapping link (4 s down, 6 s up) fences each time; the guest is placed again each time and never runs twice',
    cluster: {
      members: ['h1', 'h2'],
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'g2', on: 'h2' },
      ],
    },
    script: (sim) => {
      for (let t = 4000; t < 34_000; t += 10_000) {
        sim.at(t, (w) => w.link('h1', 'down'));
        sim.at(t + 4000, (w) => w.link('h1', 'up'));
      }
    },
    untilMs: 40_000,
    log: [
      '1.0 world: h1[g1] h2[g2]',
      '4.0 world: the link of h1 is down',
      '6.0 h1 fenced: killed g1',
      '8.0 world: the link of h1 is up',
      '8.0 h1 lease granted (token 10)',
      '8.0 h1 crm: gives up its election of an earlier lease',
      '9.0 h1 crm: elected',
      '9.0 h2 crm: another member was elected first',
      '10.0 h1 crm: h1 lost (token 4); its HA guests are given to others after the margin (2 s on this clock)',
      '12.0 h1 crm: g1 → h1 (rev 12; most free memory: 7.0 GiB of 8.0)',
      '12.5 h1 starts g1',
      '14.0 world: the link of h1 is down',
      '16.0 h1 fenced: killed g1',
      '18.0 world: the link of h1 is up',
      '18.0 h1 lease granted (token 15)',
      '18.0 h1 crm: gives up its election of an earlier lease',
      '19.0 h1 crm: elected',
      '19.0 h2 crm: another member was elected first',
      '20.0 h1 crm: h1 lost (token 10); its HA guests are given to others after the margin (2 s on this clock)',
      '22.0 h1 crm: g1 → h1 (rev 17; most free memory: 7.0 GiB of 8.0)',
      '22.5 h1 starts g1',
      '24.0 world: the link of h1 is down',
      '26.0 h1 fenced: killed g1',
      '28.0 world: the link of h1 is up',
      '28.0 h1 lease granted (token 20)',
      '28.0 h1 crm: gives up its election of an earlier lease',
      '29.0 h1 crm: elected',
      '29.0 h2 crm: another member was elected first',
      '30.0 h1 crm: h1 lost (token 15); its HA guests are given to others after the margin (2 s on this clock)',
      '32.0 h1 crm: g1 → h1 (rev 22; most free memory: 7.0 GiB of 8.0)',
      '32.5 h1 starts g1',
      '40.0 world: h1[g1] h2[g2]',
    ],
  },
  {
    title: 'a member that dies and boots again and again: its guests settle on the others',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'g2', on: 'h1' },
      ],
    },
    script: (sim) => {
      for (const t of [3000, 16_000, 29_000]) {
        sim.at(t, (w) => w.kill('h1'));
        sim.at(t + 3000, (w) => w.boot('h1'));
      }
    },
    untilMs: 40_000,
    log: [
      '1.0 world: h1[g1 g2] h2[] h3[]',
      '3.0 world: h1 dies',
      '6.0 h1 boots',
      '8.0 store: the lease of h1 expired',
      '8.0 h1 lease granted (token 13)',
      '8.0 h1 crm: elected',
      '8.0 h2 crm: another member was elected first',
      '8.0 h3 crm: another member was elected first',
      '9.0 h1 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '11.0 h1 crm: g1 → h2 (rev 14; most free memory: 8.0 GiB of 8.0)',
      '11.0 h1 crm: g2 → h3 (rev 14; most free memory: 8.0 GiB of 8.0)',
      '11.5 h2 starts g1',
      '11.5 h3 starts g2',
      '16.0 world: h1 dies',
      '19.0 h1 boots',
      '21.0 store: the lease of h1 expired',
      '21.0 h1 lease granted (token 19)',
      '21.0 h1 crm: elected',
      '21.0 h2 crm: another member was elected first',
      '21.0 h3 crm: another member was elected first',
      '29.0 world: h1 dies',
      '32.0 h1 boots',
      '34.0 store: the lease of h1 expired',
      '34.0 h1 lease granted (token 23)',
      '34.0 h1 crm: elected',
      '34.0 h2 crm: another member was elected first',
      '34.0 h3 crm: another member was elected first',
      '40.0 world: h1[] h2[g1] h3[g2]',
    ],
  },
  {
    title:
      'a frozen host (hypervisor pause) is reset by its watchdog when it thaws, before its guests run beside their restarted copies',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(5000, (w) => w.pauseHost('h1'));
      sim.at(20_000, (w) => w.resumeHost('h1'));
    },
    untilMs: 45_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '5.0 world: h1 freezes',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g1 → h2 (rev 12; most free memory: 8.0 GiB of 8.0)',
      '13.5 h2 starts g1',
      '20.0 world: h1 thaws',
      '20.0 h1 watchdog reset the host (killed g1)',
      '40.0 h1 boots',
      '40.0 h1 lease granted (token 14)',
      '45.0 world: h1[] h2[g1] h3[]',
    ],
  },
  {
    title: 'a host frozen for 1 s thaws with its guests and its lease: nothing happens',
    cluster: { members: three, guests: [{ name: 'g1', on: 'h1' }] },
    script: (sim) => {
      sim.at(5000, (w) => w.pauseHost('h1'));
      sim.at(6000, (w) => w.resumeHost('h1'));
    },
    untilMs: 15_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '5.0 world: h1 freezes',
      '6.0 world: h1 thaws',
      '15.0 world: h1[g1] h2[] h3[]',
    ],
  },
  {
    title:
      'the HA agent stopped (SIGSTOP) while guests run: the watchdog resets the host before the lease can expire',
    cluster: {
      members: three,
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'plain', on: 'h1', ha: false },
      ],
    },
    script: (sim) => sim.at(5000, (w) => w.pauseAgent('h1')),
    untilMs: 35_000,
    log: [
      '1.0 world: h1[g1 plain] h2[] h3[]',
      '5.0 world: the HA agent of h1 stops',
      '5.0 h2 crm: elected',
      '5.0 h3 crm: another member was elected first',
      '6.5 h1 watchdog reset the host (killed g1, plain)',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '12.0 h2 crm: g1 → h2 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '12.5 h2 starts g1',
      '26.5 h1 boots',
      '26.5 h1 lease granted (token 15)',
      '26.5 h1 starts plain',
      '35.0 world: h1[plain] h2[g1] h3[]',
    ],
  },
  {
    title:
      'a member whose clock runs 20 % slow fences later, yet before its guest starts elsewhere: the margin covers clocks that differ',
    cluster: {
      members: [{ name: 'h1', clockRate: 0.8 }, { name: 'h2', clockRate: 1.2 }, { name: 'h3' }],
      guests: [{ name: 'g1', on: 'h1' }],
    },
    script: (sim) => sim.at(5000, (w) => w.link('h1', 'down')),
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '5.0 world: the link of h1 is down',
      '8.5 h1 fenced: killed g1',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '10.5 store: the lease of h1 expired',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g1 → h2 (rev 12; most free memory: 8.0 GiB of 8.0)',
      '13.5 h2 starts g1',
      '20.0 world: h1[] h2[g1] h3[]',
    ],
  },
  {
    title:
      'the HA agent stops on a member whose clock runs 20 % slow: its watchdog still resets the host before its lease can expire',
    cluster: {
      members: [{ name: 'h1', clockRate: 0.8 }, { name: 'h2' }, { name: 'h3' }],
      guests: [{ name: 'g1', on: 'h1' }],
    },
    script: (sim) => sim.at(5000, (w) => w.pauseAgent('h1')),
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1] h2[] h3[]',
      '5.0 world: the HA agent of h1 stops',
      '5.0 h2 crm: elected',
      '5.0 h3 crm: another member was elected first',
      '7.0 h1 watchdog reset the host (killed g1)',
      '10.5 store: the lease of h1 expired',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g1 → h2 (rev 12; most free memory: 8.0 GiB of 8.0)',
      '13.5 h2 starts g1',
      '20.0 world: h1 down[] h2[g1] h3[]',
    ],
  },
]);

test('why nobody but its holder may revoke a member’s lease: revoked from outside, a frozen member’s guest runs twice', () => {
  // Cut one way (its renewals arrive, the answers do not), its clock slow, then frozen: it cannot
  // learn that its lease is gone, and its watchdog has not run out when the margin after the
  // revoke has. The rule (decision 0044) is what keeps this out of every other run.
  const sim = createSimulator({
    members: [{ name: 'h1' }, { name: 'h2' }, { name: 'h3', clockRate: 0.8 }],
    guests: [{ name: 'g1', on: 'h3' }],
  });
  sim.at(
    4000,
    (w) => {
      w.link('h3', 'oneway');
      w.revokeFromOutside('h3');
    },
    'race',
  );
  sim.at(6000, (w) => w.pauseHost('h3'));
  assert.throws(
    () => sim.run(20_000),
    (e: unknown) => {
      assert.ok(e instanceof InvariantError);
      assert.match(e.message, /^7\.5: h1 started g1 while it runs on h3\n/);
      return true;
    },
  );
});
