import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { type Advice, advise, type WorkloadProfile } from './advisor.ts';
import { parseProfile, readModelTable, readProfiles } from './advisor-input.ts';

const dir = mkdtempSync(path.join(tmpdir(), 'trivisor-advisor-'));
after(() => rmSync(dir, { recursive: true, force: true }));
const REPO = path.resolve(import.meta.dirname, '../..');
/** A real table measured on this host by bench/models.ts (2026-12-05), kept as a fixture. */
const MODELS = path.join(REPO, 'test/fixtures/planner/models.json');
const PROFILES = path.join(REPO, 'test/fixtures/planner/advisor-profile.csv');
const MiB = 2 ** 20;

let n = 0;
function file(text: string, ext = '.csv'): string {
  const f = path.join(dir, `f${n++}${ext}`);
  writeFileSync(f, text);
  return f;
}

type Json = Record<string, Record<string, Record<string, number>>>;
/** The fixture's table with some of its ratios replaced, written where readModelTable reads it. */
function tableFile(ratios: Partial<Record<'ct' | 'pvm' | 'vm', Record<string, number>>>): string {
  const doc = JSON.parse(readFileSync(MODELS, 'utf8')) as Json;
  for (const [model, r] of Object.entries(ratios)) Object.assign(doc.ratioToNative![model]!, r);
  return file(JSON.stringify(doc), '.json');
}

const profile = (fields: Record<string, unknown>): WorkloadProfile => parseProfile(fields, 'w');
const estimate = (a: Advice, model: string) => {
  const e = a.estimates.find((x) => x.model === model);
  assert.ok(e, `no estimate for ${model}`);
  return e;
};

describe('model advisor', async () => {
  const measured = await readModelTable(MODELS);

  test('a non-Linux OS gets vm, the only model that runs another kernel', () => {
    const a = advise(profile({ os: 'other', cpu: 2, syscalls: '500k' }), measured);
    assert.equal(a.model, 'vm');
    assert.equal(a.reason, 'vm: needs a non-Linux kernel');
    assert.match(estimate(a, 'ct').excludedBecause ?? '', /shares the host’s Linux kernel/);
    assert.match(estimate(a, 'pvm').excludedBecause ?? '', /runs only a Linux kernel/);
  });

  test('a syscall-heavy Linux workload gets ct, and the reason names what pvm would cost', () => {
    const a = advise(profile({ cpu: 0.2, syscalls: '500k' }), measured);
    assert.equal(a.model, 'ct');
    const pvm = estimate(a, 'pvm').slowdown / estimate(a, 'ct').slowdown;
    const vm = estimate(a, 'vm').slowdown / estimate(a, 'ct').slowdown;
    assert.ok(pvm > 50, `pvm ${pvm}`);
    // 0.2 cores of work at pvm's cost needs more than the one host CPU a UML kernel runs on.
    assert.ok(estimate(a, 'pvm').hostCores > 1 && estimate(a, 'pvm').guestCores === 1);
    assert.equal(
      a.reason,
      `ct: syscall-heavy: vm would cost ${vm.toFixed(1)}×, pvm ${pvm.toFixed(0)}× and could not keep up on 1 core (a pvm guest’s UML kernel runs on one host CPU)`,
    );
  });

  test('own kernel and light syscalls: pvm or vm by the measured compute overhead', async () => {
    // A quarter of a core: pvm's 3.4× still fits on the one host CPU its kernel runs on.
    const p = profile({ kernel: 'own', cpu: 0.25, syscalls: 200 });
    // Measured here: vm runs under TCG (6.1× on computation), pvm runs user code natively-ish (3.4×).
    const here = advise(p, measured);
    assert.equal(here.model, 'pvm');
    assert.match(here.reason, /^pvm: needs its own kernel; compute-bound: vm would cost 1\.\d×$/);
    assert.match(estimate(here, 'ct').excludedBecause ?? '', /shares the host’s kernel/);
    // The same workload on a host where KVM works: the table, not the code, changes the answer.
    const kvm = await readModelTable(
      tableFile({ vm: { cpu: 1.05, syscalls: 1.6, forkExec: 1.5, fileFsync: 1.4 } }),
    );
    const there = advise(p, kvm);
    assert.equal(there.model, 'vm');
    assert.match(there.reason, /^vm: needs its own kernel; compute-bound: pvm would cost 3\.\d×$/);
  });

  test('isolation from other guests rules out ct; syscall-heavy then goes to vm', () => {
    const a = advise(
      profile({ isolation: 'own-kernel', cpu: 0.1, syscalls: '50k', memory: '1GiB' }),
      measured,
    );
    assert.equal(a.model, 'vm');
    assert.match(
      a.reason,
      /^vm: needs its own kernel for isolation; syscall-heavy: pvm would cost \d+(\.\d)?× and could not keep up on 1 core \(a pvm guest’s UML kernel runs on one host CPU\)$/,
    );
    assert.equal(estimate(a, 'vm').hostMemoryBytes, 1024 * MiB + measured.models.vm.idleMemoryBytes);
  });

  test('the estimate is the measured ratio, weighted by where the workload spends its time', () => {
    // Nothing but system calls (its CPU is theirs): each model's slowdown is its syscall ratio.
    const calls = advise(profile({ syscalls: 1000 }), measured);
    for (const m of ['ct', 'pvm', 'vm'] as const) {
      const ratio = measured.models[m].syscallSeconds / measured.native.syscallSeconds;
      assert.ok(Math.abs(estimate(calls, m).slowdown - ratio) < 1e-9, `${m}: ${estimate(calls, m).slowdown}`);
    }
    // Half computation, half system calls (by native time): the mean of the two ratios.
    const perCall = measured.native.syscallSeconds;
    const mixed = advise(profile({ cpu: 2 * 1000 * perCall, syscalls: 1000 }), measured);
    const pvm = measured.models.pvm;
    const expected = (pvm.computeRatio + pvm.syscallSeconds / perCall) / 2;
    assert.ok(Math.abs(estimate(mixed, 'pvm').slowdown - expected) < 1e-9);
    // I/O as 64 KiB synchronous writes: 20 MiB/s is 320 of them a second, like 320 IOPS.
    const io = advise(profile({ io: '20MiB/s' }), measured);
    assert.deepEqual(io.estimates, advise(profile({ io: '320iops' }), measured).estimates);
    assert.ok(
      Math.abs(estimate(io, 'vm').busySecondsPerSecond.io - 320 * measured.models.vm.ioOpSeconds) < 1e-12,
    );
    assert.equal(
      advise(profile({ io: '2000iops' }), measured).reason.split(':')[1],
      ' I/O-heavy (synchronous writes)',
    );
  });

  test('a fake table with cheap pvm system calls turns a syscall-heavy own-kernel workload to pvm', async () => {
    const p = profile({ kernel: 'own', cpu: 0.2, syscalls: '500k' });
    assert.equal(advise(p, measured).model, 'vm');
    const cheap = await readModelTable(tableFile({ pvm: { cpu: 1.1, syscalls: 2 } }));
    assert.equal(advise(p, cheap).model, 'pvm');
  });

  test('a workload that does nearly nothing goes where a guest costs the least memory', () => {
    const idle = advise(profile({ memory: '64MiB' }), measured);
    assert.equal(idle.model, 'ct');
    assert.match(
      idle.reason,
      /^ct: pvm and vm cost about the same but take \d+ MiB and \d+ MiB of host memory per guest against 1\.4 MiB$/,
    );
    const own = advise(profile({ kernel: 'own' }), measured);
    assert.equal(own.model, 'pvm', 'a pvm guest idles in less memory than a vm on this host');
    assert.match(own.reason, /^pvm: needs its own kernel; vm costs about the same but takes \d+ MiB/);
  });

  test('contention: a model that needs more cores than the guest has loses to one that keeps up', async () => {
    // Own kernel, a quarter of a core of computation and 300 synchronous writes a second. On this
    // table vm is the lesser slowdown overall (pvm's writes cost 22×, vm's 11×) but needs 0.25 × 6.1
    // cores of computation, where pvm needs 0.25 × 3.4: on 1 core only pvm keeps up with the rates.
    const fields = { kernel: 'own', cpu: 0.25, io: '300iops' };
    const free = advise(profile(fields), measured);
    assert.equal(free.model, 'vm', 'with no core count known, the least slowdown');
    assert.equal(estimate(free, 'vm').throughput, 1);
    assert.equal(estimate(free, 'pvm').throughput, 1, 'pvm needs less than its one CPU');
    assert.ok(estimate(free, 'vm').slowdown < estimate(free, 'pvm').slowdown);

    const onOne = advise(profile({ ...fields, cores: 1 }), measured);
    assert.equal(onOne.model, 'pvm');
    const vm = estimate(onOne, 'vm');
    assert.ok(vm.hostCores > 1 && vm.hostCores < 2, `vm needs ${vm.hostCores} cores`);
    assert.equal(vm.guestCores, 1);
    assert.equal(vm.throughput, 1 / vm.hostCores);
    assert.equal(estimate(onOne, 'pvm').throughput, 1);
    assert.equal(
      onOne.reason,
      `pvm: needs its own kernel; vm cannot keep up: it would need ${vm.hostCores.toFixed(1)} cores of 1, ${Math.round(100 * vm.throughput)}% of the measured rates`,
    );

    // The host's own cores, from the table's provenance, bound every guest: the same answer with no
    // core count in the profile, and a profile asking for more cores than the host has gets the host's.
    const doc = JSON.parse(readFileSync(MODELS, 'utf8')) as Record<string, unknown>;
    const oneCoreHost = await readModelTable(
      file(JSON.stringify({ ...doc, provenance: { cpus: 1 } }), '.json'),
    );
    assert.equal(oneCoreHost.hostCores, 1);
    assert.equal(advise(profile(fields), oneCoreHost).model, 'pvm');
    assert.equal(estimate(advise(profile({ ...fields, cores: 8 }), oneCoreHost), 'vm').guestCores, 1);
  });

  test('a pvm guest runs on one host CPU: pvm loses a workload that needs more, and says why', () => {
    // Own kernel, one core of computation: pvm is the lesser slowdown (3.4× against vm's 6.1× under
    // TCG) but its uniprocessor UML kernel keeps one host CPU busy at most, whatever the guest's cores.
    const a = advise(profile({ kernel: 'own', cpu: 1, syscalls: 200, cores: 8 }), measured);
    const pvm = estimate(a, 'pvm');
    const vm = estimate(a, 'vm');
    assert.ok(pvm.slowdown < vm.slowdown);
    assert.equal(pvm.guestCores, 1);
    assert.equal(vm.guestCores, 8);
    assert.ok(pvm.hostCores > 3 && pvm.hostCores < 4, `pvm needs ${pvm.hostCores} cores`);
    assert.equal(pvm.throughput, 1 / pvm.hostCores);
    assert.equal(vm.throughput, 1);
    assert.equal(a.model, 'vm');
    assert.equal(
      a.reason,
      `vm: needs its own kernel; pvm cannot keep up: it would need ${pvm.hostCores.toFixed(1)} cores of 1 (a pvm guest’s UML kernel runs on one host CPU), ${Math.round(100 * pvm.throughput)}% of the measured rates`,
    );
    // A guest given 1 core anyway: the cap changes nothing and the reason does not blame UML.
    const one = advise(profile({ kernel: 'own', cpu: 1, syscalls: 200, cores: 1 }), measured);
    assert.doesNotMatch(one.reason, /UML/);
  });

  test('contention: when the only model that can run a workload saturates, the reason says by how much', () => {
    const a = advise(profile({ os: 'other', cpu: 2, cores: 2 }), measured);
    const vm = estimate(a, 'vm');
    assert.equal(a.model, 'vm');
    assert.ok(vm.throughput < 0.2, `vm keeps ${vm.throughput} of the rates`);
    assert.equal(
      a.reason,
      `vm: needs a non-Linux kernel; even so vm cannot keep up: it would need ${vm.hostCores.toFixed(0)} cores of 2, ${Math.round(100 * vm.throughput)}% of the measured rates`,
    );
    // Within its cores a workload keeps its rates in every model that runs it.
    const light = advise(profile({ cpu: 0.1, cores: 2 }), measured);
    for (const e of light.estimates) assert.equal(e.throughput, 1, e.model);
  });

  test('network traffic costs a system call per 64 KiB and the copy of its bytes, at each model’s measured ratios', () => {
    const rate = 200 * MiB;
    const a = advise(profile({ cpu: 0.05, net: '200MiB/s' }), measured);
    const messages = rate / (64 * 1024);
    for (const model of ['ct', 'pvm', 'vm'] as const) {
      const costs = measured.models[model];
      const e = estimate(a, model);
      assert.ok(
        Math.abs(
          e.busySecondsPerSecond.network - (messages * costs.syscallSeconds + rate * costs.copyByteSeconds),
        ) < 1e-12,
        model,
      );
    }
    // This table's memory-bandwidth ratio (vm 150× under TCG) makes vm's copies the largest part.
    assert.equal(a.model, 'ct');
    assert.match(a.reason, /^ct: network-heavy: /);
    const vm = estimate(a, 'vm');
    assert.ok(vm.busySecondsPerSecond.network > vm.busySecondsPerSecond.compute);
    assert.ok(vm.hostCores > vm.busySecondsPerSecond.compute + vm.busySecondsPerSecond.network - 1e-9);
    // Without traffic the estimate is what it was: no network part.
    assert.equal(estimate(advise(profile({ cpu: 0.1 }), measured), 'vm').busySecondsPerSecond.network, 0);
  });

  test('an inventory gives a profile a workload: mean cores, memory, disk writes and network, its cores for contention', async () => {
    const head =
      'vm,timestamp_s,cpu_cores,cpu_capacity_mhz,cpu_usage_mhz,mem_capacity_kb,mem_usage_kb,disk_read_kbps,disk_write_kbps,net_rx_kbps,net_tx_kbps';
    // VM 1: 2 cores, busy 1 then 0 (mean 0.5), 2 then 4 MiB, 640 then 1,920 KB/s written (mean 1,280),
    // 100 KB/s of traffic; VM 2: 1 core, 0.8 busy, nothing else.
    const bb = file(
      `${head}\n1,0,2,4000,2000,8388608,2048,0,640,60,40\n1,300,2,4000,0,8388608,4096,0,1920,50,50\n2,0,1,1000,800,1048576,0,0,0,0,0\n2,300,1,1000,800,1048576,0,0,0,0,0\n`,
    );
    const [one, two] = await readProfiles(bb);
    assert.deepEqual(one, {
      id: '1',
      os: 'linux',
      kernel: 'any',
      isolation: 'shared-kernel-ok',
      cpuCores: 0.5,
      syscallsPerSecond: 0,
      forkExecsPerSecond: 0,
      ioOpsPerSecond: (1280 * 1024) / (64 * 1024),
      networkBytesPerSecond: 100 * 1024,
      memoryBytes: 3 * MiB,
      cores: 2,
    });
    assert.equal(two?.cores, 1);
    // What the trace does not say is assumed for all its workloads; on its 1 core VM 2 keeps up in
    // no model but ct when it needs its own kernel.
    const own = await readProfiles(bb, { kernel: 'own' });
    assert.deepEqual(
      own.map((p) => p.kernel),
      ['own', 'own'],
    );
    const a = advise(own[1] as WorkloadProfile, measured);
    assert.equal(a.model, 'pvm');
    assert.match(
      a.reason,
      /; even so pvm cannot keep up: it would need 2\.7 cores of 1, 37% of the measured rates$/,
    );
    // A CPU-only inventory in MIPS has no profile; assumptions with a profile file are refused.
    await assert.rejects(
      readProfiles(file('vm,t0,t1\n1,10,20\n')),
      /: A planetlab inventory measures CPU in MIPS, not cores busy: it gives no workload profile/,
    );
    await assert.rejects(readProfiles(PROFILES, { os: 'other' }), {
      code: 'InvalidArgument',
      message: /^--os applies to an inventory's workloads;/,
    });
  });

  test('profile fields: defaults, units, percentages', () => {
    const p = profile({ cpu: '50%', syscalls: '1.5k', forks: '3', io: '1GiB/s', memory: '2GiB' });
    assert.deepEqual(p, {
      id: 'w',
      os: 'linux',
      kernel: 'any',
      isolation: 'shared-kernel-ok',
      cpuCores: 0.5,
      syscallsPerSecond: 1500,
      forkExecsPerSecond: 3,
      ioOpsPerSecond: 16384,
      networkBytesPerSecond: 0,
      memoryBytes: 2 * 1024 * MiB,
    });
    const q = profile({ net: '2MiB/s', cores: '1.5' });
    assert.equal(q.networkBytesPerSecond, 2 * MiB);
    assert.equal(q.cores, 1.5);
    assert.equal(profile({ net: '800kB/s' }).networkBytesPerSecond, 800_000);
    assert.equal(profile({ net: 4096 }).networkBytesPerSecond, 4096, 'a JSON number is bytes a second');
  });

  test('every bad profile field is one InvalidArgument line saying what is wrong', () => {
    const bad: Array<[Record<string, unknown>, RegExp]> = [
      [{ os: 'windows' }, /^os "windows" is not one of linux, other$/],
      [{ kernel: 'mine' }, /^kernel "mine" is not one of any, own$/],
      [{ isolation: 'total' }, /^isolation "total" is not one of shared-kernel-ok, own-kernel$/],
      [{ syscalls: -3 }, /^syscalls -3 is negative$/],
      [{ syscalls: '-3k' }, /^syscalls "-3k" is negative$/],
      [{ forks: 'many' }, /^forks "many" is not a number$/],
      [{ cpu: '-10%' }, /^cpu "-10" is negative$/],
      [{ io: '20' }, /^io "20" is not a rate: write e\.g\. 20MiB\/s or 300iops$/],
      [{ io: '5parsecs/s' }, /^io "5parsecs\/s" is not a rate/],
      [{ io: '-1MiB/s' }, /^io "-1MiB\/s" is negative$/],
      [{ memory: '-1GiB' }, /^memory "-1GiB" is negative$/],
      [{ memory: 'lots' }, /^The memory "lots" is not a size/],
      [{ net: '20' }, /^net "20" is not a rate: write e\.g\. 20MiB\/s or 800kB\/s$/],
      [{ net: '5parsecs/s' }, /^net "5parsecs\/s" is not a rate/],
      [{ net: '-1MiB/s' }, /^net "-1MiB\/s" is negative$/],
      [{ net: -5 }, /^net -5 is negative$/],
      [{ cores: 0 }, /^cores 0 leaves the guest no CPU/],
      [{ cores: '-2' }, /^cores "-2" is negative$/],
      [{ cores: 'all' }, /^cores "all" is not a number$/],
      [{ colour: 'blue' }, /^Unknown field "colour": use id, os/],
    ];
    for (const [fields, message] of bad) {
      assert.throws(
        () => profile(fields),
        (e: Error & { code?: string }) => {
          assert.equal(e.code, 'InvalidArgument');
          assert.match(e.message, message);
          return true;
        },
        JSON.stringify(fields),
      );
    }
  });

  test('measurements: missing, malformed or from an older bench each get one line saying how to measure', async () => {
    const missing = path.join(dir, 'none.json');
    await assert.rejects(readModelTable(missing), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'FailedPrecondition');
      assert.equal(
        e.message,
        `No three-model measurements at ${missing}: measure this host with \`node bench/models.ts ct,pvm,vm 3\` (writes bench/results/models.json), or give --measurements FILE`,
      );
      return true;
    });
    const doc = JSON.parse(readFileSync(MODELS, 'utf8')) as Record<string, unknown>;
    const cases: Array<[string, RegExp]> = [
      ['{"ratio', /are not JSON/],
      [
        JSON.stringify({ ...doc, operations: undefined }),
        /no usable operations\.syscalls \(written by an older bench\/models\.ts\): measure again with `node bench\/models\.ts ct,pvm,vm 3`$/,
      ],
      [JSON.stringify({ ...doc, bootToInitMs: { ct: 1, pvm: 2 } }), /no usable bootToInitMs\.vm/],
      [
        JSON.stringify({ ...doc, idleHostMemoryMiB: { ct: 1, pvm: -2, vm: 3 } }),
        /no usable idleHostMemoryMiB\.pvm/,
      ],
      [JSON.stringify([1, 2]), /no usable seconds\.native\.syscalls/],
    ];
    for (const [text, message] of cases) {
      await assert.rejects(readModelTable(file(text, '.json')), (e: Error & { code?: string }) => {
        assert.equal(e.code, 'InvalidArgument');
        assert.match(e.message, message);
        assert.ok(!e.message.includes('\n'));
        return true;
      });
    }
    const zero = tableFile({ pvm: { syscalls: 0 } });
    await assert.rejects(readModelTable(zero), /ratio of 0 at ratioToNative\.pvm\.syscalls/);
  });

  test('profile files: CSV with a header and JSON, errors naming the file and the line or entry', async () => {
    const csv = await readProfiles(PROFILES);
    assert.deepEqual(
      csv.map((p) => [p.id, advise(p, measured).model]),
      [
        ['web', 'ct'],
        ['dns', 'pvm'],
        ['win2019', 'vm'],
      ],
    );
    const json = await readProfiles(
      file(
        JSON.stringify([
          { id: 'a', cpu: 0.5, io: '300iops' },
          { os: 'other', memory: 2 ** 30 },
        ]),
        '.json',
      ),
    );
    assert.deepEqual(
      json.map((p) => [p.id, p.ioOpsPerSecond, p.memoryBytes]),
      [
        ['a', 300, 0],
        ['workload2', 0, 2 ** 30],
      ],
    );
    assert.equal((await readProfiles(file('{"id":"one","cpu":1}', '.json')))[0]?.cpuCores, 1);

    const refused = async (f: string, message: string) =>
      assert.rejects(readProfiles(f), (e: Error & { code?: string }) => {
        assert.equal(e.code, 'InvalidArgument');
        assert.equal(e.message, message.replaceAll('FILE', f));
        return true;
      });
    await refused(file('id,cpu\na,1,2\n'), 'FILE:2: 3 columns where the header has 2');
    await refused(
      file('id,cpu,speed\n'),
      'FILE:1: the header has an unknown column "speed": use id, os, kernel, isolation, cpu, syscalls, forks, io, net, memory, cores',
    );
    await refused(file('id,cpu,cpu\n'), 'FILE:1: the header names a column twice');
    await refused(file('# only a comment\nid,syscalls\n\na,-4\n'), 'FILE:4: syscalls "-4" is negative');
    await refused(file('id,os\na,plan9\n'), 'FILE:2: os "plan9" is not one of linux, other');
    await refused(file('id,cpu\na,1\na,2\n'), 'FILE: workload "a" appears twice');
    await refused(file('id,cpu\n'), 'FILE holds no workload');
    await refused(file('[{"id":"a"},"b"]', '.json'), 'FILE: workload 2: is not an object');
    await refused(
      file('[{"id":"a","io":20}]', '.json'),
      'FILE: workload 1: io 20 is not a rate: write e.g. 20MiB/s or 300iops',
    );
    await refused(file('[{"id":"a"', '.json'), `FILE is not valid JSON (${jsonError('[{"id":"a"')})`);
    await refused(path.join(dir, 'absent.csv'), 'Cannot read the workload profile FILE: no such file');
  });
});

function jsonError(text: string): string {
  try {
    JSON.parse(text);
  } catch (e) {
    return (e as Error).message;
  }
  return '';
}

describe('trivisor plan advise', () => {
  const cli = (args: string[]) =>
    spawnSync(process.execPath, [path.join(REPO, 'src/cli/main.ts'), 'plan', 'advise', ...args], {
      encoding: 'utf8',
      env: { ...process.env, TRIVISOR_DIR: path.join(dir, 'no-daemon') },
    });

  test('advises a fixture file in the CLI process, as JSON with every model’s estimate', () => {
    const r = cli([PROFILES, '--measurements', MODELS, '--format', 'json']);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as {
      measurements: { file: string; measuredAt: string };
      advice: Array<{
        id: string;
        model: string;
        reason: string;
        estimates: Array<{
          model: string;
          slowdown: number;
          hostMemoryBytes: number;
          excludedBecause?: string;
        }>;
      }>;
    };
    assert.deepEqual(out.measurements, { file: MODELS, measuredAt: '2026-12-05T11:26:47.919Z' });
    assert.deepEqual(
      out.advice.map((a) => [a.id, a.model, a.reason.split(':')[0]]),
      [
        ['web', 'ct', 'ct'],
        ['dns', 'pvm', 'pvm'],
        ['win2019', 'vm', 'vm'],
      ],
    );
    assert.equal(out.advice[2]?.reason, 'vm: needs a non-Linux kernel');
    for (const a of out.advice) {
      assert.deepEqual(
        a.estimates.map((e) => e.model),
        ['ct', 'pvm', 'vm'],
      );
      for (const e of a.estimates) assert.ok(Number.isFinite(e.slowdown) && e.slowdown > 0);
    }
    assert.deepEqual(
      out.advice[2]?.estimates.map((e) => e.excludedBecause !== undefined),
      [true, true, false],
    );
  });

  test('a workload given by flags: the reason, then each model’s estimate', () => {
    const r = cli(['--measurements', MODELS, '--cpu', '0.2', '--syscalls', '500k', '--memory', '256MiB']);
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.split('\n');
    assert.match(
      lines[0] ?? '',
      /^ct: syscall-heavy: vm would cost \d\.\d×, pvm \d+× and could not keep up on 1 core/,
    );
    assert.match(
      lines[2] ?? '',
      /^estimates from the overheads measured on this host at 2026-12-05T11:26:47\.919Z/,
    );
    assert.match(lines[3] ?? '', /^MODEL +SLOWDOWN +HOST CPU +HOST MEMORY +BOOT +ISOLATION +NOTE$/);
    assert.match(lines[4] ?? '', /^ct +1\.\d\d× .* shared kernel +recommended$/);
    assert.match(lines[6] ?? '', /^vm +\d\.\d\d× .* 487MiB .* own kernel, hardware emulated$/);

    // --cores and --net: the model that cannot keep up on the guest's cores says so in its note.
    const c = cli(['--measurements', MODELS, '--kernel', 'own', '--cpu', '0.25', '--io', '300iops']);
    assert.match(c.stdout.split('\n')[0] ?? '', /^vm: /, c.stderr);
    const two = cli([
      ...['--measurements', MODELS, '--kernel', 'own', '--cpu', '0.25', '--io', '300iops'],
      '--cores',
      '1',
      '--net',
      '1MiB/s',
    ]);
    assert.equal(two.status, 0, two.stderr);
    const out = two.stdout.split('\n');
    assert.match(
      out[0] ?? '',
      /^pvm: needs its own kernel; vm cannot keep up: it would need 1\.\d cores of 1, \d+% of/,
    );
    assert.match(out[6] ?? '', /^vm .* saturated: \d+% of the rates on 1 core$/);
  });

  test('an inventory in the CLI: one row a workload, --kernel for all of them, other flags refused', () => {
    const bb = file(
      'vm,timestamp_s,cpu_cores,cpu_capacity_mhz,cpu_usage_mhz,mem_capacity_kb,mem_usage_kb,disk_read_kbps,disk_write_kbps,net_rx_kbps,net_tx_kbps\n' +
        '1,0,1,1000,800,1048576,0,0,0,0,0\n2,0,4,4000,100,1048576,0,0,0,0,0\n',
    );
    const r = cli([bb, '--kernel', 'own', '--measurements', MODELS, '--format', 'json']);
    assert.equal(r.status, 0, r.stderr);
    const advice = (JSON.parse(r.stdout) as { advice: Array<{ id: string; model: string; reason: string }> })
      .advice;
    assert.deepEqual(
      advice.map((a) => [a.id, a.model]),
      [
        ['1', 'pvm'],
        ['2', 'pvm'],
      ],
    );
    assert.match(advice[0]?.reason ?? '', /even so pvm cannot keep up/);
    assert.doesNotMatch(advice[1]?.reason ?? '', /keep up/);
    const refused = cli([bb, '--cpu', '1', '--measurements', MODELS]);
    assert.equal(refused.status, 1);
    assert.match(refused.stderr, /not both \(--cpu with /);
  });

  test('plan consolidate --advise: the plan, and a model per workload (none for a PlanetLab inventory, saying why)', () => {
    const consolidate = (args: string[]) =>
      spawnSync(process.execPath, [path.join(REPO, 'src/cli/main.ts'), 'plan', 'consolidate', ...args], {
        encoding: 'utf8',
        env: { ...process.env, TRIVISOR_DIR: path.join(dir, 'no-daemon') },
      });
    const bb = file(
      'vm,timestamp_s,cpu_cores,cpu_capacity_mhz,cpu_usage_mhz,mem_capacity_kb,mem_usage_kb,disk_read_kbps,disk_write_kbps,net_rx_kbps,net_tx_kbps\n' +
        '1,0,1,1000,800,1048576,0,0,0,0,0\n2,0,4,4000,100,1048576,0,0,6400,0,0\n',
    );
    const base = [bb, '--host-size', 'cpu=8,memory=8GiB', '--format', 'json', '--measurements', MODELS];
    const plain = consolidate(base);
    assert.equal(plain.status, 0, plain.stderr);
    assert.equal((JSON.parse(plain.stdout) as { models?: unknown }).models, undefined, 'only when asked');
    const r = consolidate([...base, '--advise']);
    assert.equal(r.status, 0, r.stderr);
    const out = JSON.parse(r.stdout) as {
      hosts: Array<{ workloads: string[] }>;
      models: {
        counts: Record<string, number>;
        advice: Array<{ id: string; model: string; reason: string }>;
      };
    };
    assert.deepEqual(out.hosts.flatMap((h) => h.workloads).sort(), ['1', '2']);
    assert.deepEqual(out.models.counts, { ct: 2, pvm: 0, vm: 0 });
    assert.match(out.models.advice[1]?.reason ?? '', /^ct: I\/O-heavy \(synchronous writes\): /);
    const pl = consolidate([file('vm,t0,t1\n1,10,20\n'), '--host-size', 'cpu=5320', '--advise']);
    assert.equal(pl.status, 0, pl.stderr);
    assert.match(
      pl.stdout,
      /^no model per workload: A planetlab inventory measures CPU in MIPS, not cores busy/m,
    );
  });

  test('bad input is one Error: line, nothing on stdout, exit 1', () => {
    const missing = path.join(dir, 'no-models.json');
    const cases: Array<[string[], string]> = [
      [
        ['--measurements', MODELS, '--os', 'beos'],
        'Error: The workload’s os "beos" is not one of linux, other\n',
      ],
      [['--measurements', MODELS, '--syscalls', '-5'], 'Error: The workload’s syscalls "-5" is negative\n'],
      [
        ['--measurements', missing, '--cpu', '1'],
        `Error: No three-model measurements at ${missing}: measure this host with \`node bench/models.ts ct,pvm,vm 3\` (writes bench/results/models.json), or give --measurements FILE\n`,
      ],
      [
        ['--measurements', MODELS, PROFILES, '--cpu', '1'],
        `Error: Give the workload either as a file or as flags, not both (--cpu with ${PROFILES})\n`,
      ],
      [
        ['--measurements', PROFILES, '--cpu', '1'],
        `Error: The measurements ${PROFILES} are not JSON (${jsonError(readFileSync(PROFILES, 'utf8'))})\n`,
      ],
    ];
    for (const [args, stderr] of cases) {
      const r = cli(args);
      assert.equal(r.stderr, stderr, args.join(' '));
      assert.equal(r.status, 1);
      assert.equal(r.stdout, '');
    }
  });
});
