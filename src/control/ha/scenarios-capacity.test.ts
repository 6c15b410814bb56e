import { scenarios } from './scenario-runner.ts';

/** Capacity: priority order, leftovers, evacuated members, and what comes back. */

scenarios([
  {
    title: 'capacity shortage: the highest priorities are restarted, the rest are reported once and wait',
    cluster: {
      members: [{ name: 'h1' }, { name: 'h2', memoryGiB: 4 }],
      guests: [
        { name: 'low', on: 'h1', memoryGiB: 2, priority: 1 },
        { name: 'high', on: 'h1', memoryGiB: 2, priority: 9 },
        { name: 'mid', on: 'h1', memoryGiB: 2, priority: 5 },
        { name: 'local', on: 'h2', memoryGiB: 1 },
      ],
    },
    script: (sim) => sim.at(5000, (w) => w.kill('h1')),
    untilMs: 25_000,
    log: [
      '1.0 world: h1[high low mid] h2[local]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '11.0 h2 crm: h1 lost (token 4); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: mid cannot be placed: No member can take a ct guest with 2.0 GiB and 1 CPUs: h1 is Offline; h2 has 1.0 GiB of memory free, the guest needs 2.0',
      '13.0 h2 crm: low cannot be placed: No member can take a ct guest with 2.0 GiB and 1 CPUs: h1 is Offline; h2 has 1.0 GiB of memory free, the guest needs 2.0',
      '13.0 h2 crm: high → h2 (rev 13; most free memory: 3.0 GiB of 4.0)',
      '13.5 h2 starts high',
      '25.0 world: h1 down[] h2[high local]',
    ],
  },
  {
    title: 'leftovers are placed when the lost member comes back with room',
    cluster: {
      members: [{ name: 'h1' }, { name: 'h2', memoryGiB: 2 }],
      guests: [
        { name: 'a', on: 'h1', memoryGiB: 2, priority: 2 },
        { name: 'b', on: 'h1', memoryGiB: 2, priority: 1 },
      ],
    },
    script: (sim) => {
      sim.at(5000, (w) => w.kill('h1'));
      sim.at(20_000, (w) => w.boot('h1'));
    },
    untilMs: 30_000,
    log: [
      '1.0 world: h1[a b] h2[]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '11.0 h2 crm: h1 lost (token 4); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: b cannot be placed: No member can take a ct guest with 2.0 GiB and 1 CPUs: h1 is Offline; h2 has 0.0 GiB of memory free, the guest needs 2.0',
      '13.0 h2 crm: a → h2 (rev 11; most free memory: 2.0 GiB of 2.0)',
      '13.5 h2 starts a',
      '20.0 h1 boots',
      '20.0 h1 lease granted (token 13)',
      '20.0 h2 crm: b → h1 (rev 13; most free memory: 6.0 GiB of 8.0)',
      '20.5 h1 starts b',
      '30.0 world: h1[b] h2[a]',
    ],
  },
  {
    title: 'a guest too big for any survivor waits, while smaller ones of lower priority are restarted',
    cluster: {
      members: [{ name: 'h1', memoryGiB: 16 }, { name: 'h2' }, { name: 'h3' }],
      guests: [
        { name: 'big', on: 'h1', memoryGiB: 12, priority: 9 },
        { name: 'small', on: 'h1', memoryGiB: 1 },
      ],
    },
    script: (sim) => sim.at(5000, (w) => w.kill('h1')),
    untilMs: 20_000,
    log: [
      '1.0 world: h1[big small] h2[] h3[]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: big cannot be placed: No member can take a ct guest with 12.0 GiB and 1 CPUs: h1 is Offline; h2 has 8.0 GiB of memory free, the guest needs 12.0; h3 has 8.0 GiB of memory free, the guest needs 12.0',
      '13.0 h2 crm: small → h2 (rev 13; most free memory: 8.0 GiB of 8.0)',
      '13.5 h2 starts small',
      '20.0 world: h1 down[] h2[small] h3[]',
    ],
  },
  {
    title: 'an evacuated member gets none of a lost member’s guests',
    cluster: {
      members: ['h1', 'h2', 'h3'],
      guests: [
        { name: 'g1', on: 'h1' },
        { name: 'g2', on: 'h1' },
      ],
    },
    script: (sim) => {
      sim.at(2000, (w) => w.evacuate('h3'));
      sim.at(5000, (w) => w.kill('h1'));
    },
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1 g2] h2[] h3[]',
      '2.0 world: h3 is evacuated',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g1 → h2 (rev 14; most free memory: 8.0 GiB of 8.0)',
      '13.0 h2 crm: g2 → h2 (rev 14; most free memory: 7.0 GiB of 8.0)',
      '13.5 h2 starts g1',
      '13.5 h2 starts g2',
      '20.0 world: h1 down[] h2[g1 g2] h3[]',
    ],
  },
  {
    title: 'the restarted guests spread by free memory over the survivors',
    cluster: {
      members: [{ name: 'h1' }, { name: 'h2', memoryGiB: 8 }, { name: 'h3', memoryGiB: 16 }],
      guests: [
        { name: 'g1', on: 'h1', memoryGiB: 3, priority: 4 },
        { name: 'g2', on: 'h1', memoryGiB: 3, priority: 3 },
        { name: 'g3', on: 'h1', memoryGiB: 3, priority: 2 },
        { name: 'g4', on: 'h2', memoryGiB: 2 },
      ],
    },
    script: (sim) => sim.at(5000, (w) => w.kill('h1')),
    untilMs: 20_000,
    log: [
      '1.0 world: h1[g1 g2 g3] h2[g4] h3[]',
      '5.0 world: h1 dies',
      '10.0 store: the lease of h1 expired',
      '10.0 h2 crm: elected',
      '10.0 h3 crm: another member was elected first',
      '11.0 h2 crm: h1 lost (token 5); its HA guests are given to others after the margin (2 s on this clock)',
      '13.0 h2 crm: g1 → h3 (rev 15; most free memory: 16.0 GiB of 16.0)',
      '13.0 h2 crm: g2 → h3 (rev 15; most free memory: 13.0 GiB of 16.0)',
      '13.0 h2 crm: g3 → h3 (rev 15; most free memory: 10.0 GiB of 16.0)',
      '13.5 h3 starts g1',
      '13.5 h3 starts g2',
      '13.5 h3 starts g3',
      '20.0 world: h1 down[] h2[g4] h3[g1 g2 g3]',
    ],
  },
]);
