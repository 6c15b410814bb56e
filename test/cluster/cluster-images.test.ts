import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { createReadStream, existsSync, readdirSync, statSync } from 'node:fs';
import { mkdir, readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { hostRunner } from '../../src/host/runner.ts';
import { type Daemon, eventually } from '../system/harness.ts';
import { formCluster, makeTestCluster, type TestCluster } from './cluster-harness.ts';

/*
 * Issue 12 §4 on two members (decision 0034): a vm disk image imported on one member is
 * fetched by the other when a guest of it is made there, verified against the digest its
 * record holds; and a network's answer shows its bridge on each member.
 */

const sha256Of = async (file: string): Promise<string> => {
  const hash = createHash('sha256');
  for await (const chunk of createReadStream(file)) hash.update(chunk as Buffer);
  return hash.digest('hex');
};

/** One `Error:` line and exit code 1. */
function refused(r: { code: number; stdout: string; stderr: string }, pattern: RegExp): void {
  assert.equal(r.code, 1, r.stdout);
  assert.match(r.stderr, /^Error: [^\n]+\n$/, r.stderr);
  assert.match(r.stderr, pattern);
}

/** What a member's images/ holds besides complete images (a transfer's temp dir, say). */
const imageLeftovers = (d: Daemon): string[] =>
  readdirSync(path.join(d.stateDir, 'images')).filter((n) => !/^[0-9a-f]{64}$/.test(n));

let cluster: TestCluster;

before(async () => {
  cluster = await makeTestCluster(['m1', 'm2']);
});

after(async () => {
  if (cluster) await cluster.destroy();
});

describe('images and networks on a two-member cluster', () => {
  test('bootstrap and join: two Online members', async () => {
    await formCluster(cluster);
  });

  test("a network made through m1 shows its bridge Created on both members in m2's network info", async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    m1.daemon.ok(['network', 'create', 'imgnet', 'ipv4.address=198.19.78.1/24']);
    type Shown = { status: string; members?: Array<{ name: string; status: string }> };
    let shown: Shown | undefined;
    await eventually('both members built imgnet', () => {
      shown = JSON.parse(m2.daemon.ok(['network', 'info', 'imgnet', '--format', 'json'])) as Shown;
      return (shown.members ?? []).every((m) => m.status === 'Created') && shown.members?.length === 2;
    });
    assert.equal(shown?.status, 'Created');
    assert.deepEqual(
      shown?.members?.map((m) => ({ name: m.name, status: m.status })),
      [
        { name: 'm1', status: 'Created' },
        { name: 'm2', status: 'Created' },
      ],
    );
    // Each member's line names its end of the VXLAN (decision 0050).
    assert.match(
      m2.daemon.ok(['network', 'info', 'imgnet']),
      /\nMembers:\n {2}m1: Created \(tunnel endpoint [\d.]+\)\n {2}m2: Created \(tunnel endpoint [\d.]+\)\n/,
    );
    // The list says the same.
    const listed = (
      JSON.parse(m1.daemon.ok(['network', 'list', '--format', 'json'])) as Array<Shown & { name: string }>
    ).find((n) => n.name === 'imgnet');
    assert.deepEqual(
      listed?.members?.map((m) => m.name),
      ['m1', 'm2'],
    );
    m1.daemon.ok(['network', 'delete', 'imgnet']);
  });

  test("a vm guest made on m2 from a disk image imported on m1: m2 fetches the image, and the guest's disk is an overlay on a copy whose sha256 is the recorded one", async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    // A 48 MiB raw whole disk: a boot signature, and data at a few places among zeros.
    const media = path.join(m1.daemon.stateDir, 'test-media');
    await mkdir(media, { recursive: true });
    const raw = Buffer.alloc(48 * 1024 * 1024);
    raw[510] = 0x55;
    raw[511] = 0xaa;
    randomBytes(2 * 1024 * 1024).copy(raw, 1024 * 1024);
    randomBytes(64 * 1024).copy(raw, 30 * 1024 * 1024);
    const file = path.join(media, 'tiny.img');
    await writeFile(file, raw);
    m1.daemon.ok(['image', 'import', file, '--alias', 'tiny']);
    const image = JSON.parse(m1.daemon.ok(['image', 'info', 'tiny', '--format', 'json'])) as {
      fingerprint: string;
      type: string;
      properties: Record<string, string>;
    };
    assert.equal(image.type, 'disk');
    const recorded = image.properties['disk.qcow2_sha256'];
    assert.match(recorded ?? '', /^[0-9a-f]{64}$/);
    const onM1 = path.join(m1.daemon.stateDir, 'images', image.fingerprint, 'disk.qcow2');
    assert.equal(await sha256Of(onM1), recorded);
    const onM2 = path.join(m2.daemon.stateDir, 'images', image.fingerprint, 'disk.qcow2');
    assert.equal(existsSync(onM2), false);

    const made = m1.daemon.cli(['create', 'tiny', 'd1', '--model', 'vm', '--target', 'm2'], {
      timeoutMs: 180_000,
    });
    assert.equal(made.code, 0, `${made.stderr}\n${m2.daemon.stderr().slice(-3000)}`);
    assert.equal(await sha256Of(onM2), recorded, "m2's copy is the recorded disk");
    const st = statSync(onM2);
    assert.equal(st.mode & 0o777, 0o400);
    assert.ok(st.blocks * 512 < 48 * 1024 * 1024, 'the copy is not a whole raw disk');
    const overlay = path.join(m2.daemon.stateDir, 'guests', 'd1', 'root.qcow2');
    const info = JSON.parse(
      (await hostRunner().run(['qemu-img', 'info', '-U', '--output=json', overlay])).stdout,
    ) as { 'backing-filename'?: string };
    assert.equal(info['backing-filename'], onM2, "the guest's disk is an overlay on m2's copy");
    assert.deepEqual(imageLeftovers(m2.daemon), []);
    // It starts on m2, asked through m1 (no OS on this disk: its firmware finds nothing to boot).
    const started = m1.daemon.cli(['start', 'd1'], { timeoutMs: 180_000 });
    assert.equal(started.code, 0, `${started.stderr}\n${m2.daemon.stderr().slice(-3000)}`);
    const d1 = (
      JSON.parse(m1.daemon.ok(['list', '--format', 'json'])) as Array<{
        name: string;
        status: string;
        location?: string;
        state: { pid: number | null };
      }>
    ).find((g) => g.name === 'd1');
    assert.equal(d1?.status, 'Running');
    assert.equal(d1?.location, 'm2');
    assert.ok(d1?.state.pid && existsSync(`/proc/${d1.state.pid}`), 'its QEMU runs');
    m1.daemon.ok(['delete', '--force', 'd1']);
  });

  test('a UEFI guest of that disk image moves cold from m2 to m1 and live back to m2, its UEFI variables with it', async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const fail = (r: { stderr: string }) =>
      `${r.stderr}\nm1: ${m1.daemon.stderr().slice(-3000)}\nm2: ${m2.daemon.stderr().slice(-3000)}`;
    const store = (d: Daemon) => path.join(d.stateDir, 'guests', 'd3', 'uefi-vars.fd');
    const listed = () =>
      (
        JSON.parse(m1.daemon.ok(['list', '--format', 'json'])) as Array<{
          name: string;
          status: string;
          location?: string;
        }>
      ).find((g) => g.name === 'd3');
    const launched = m1.daemon.cli(
      ['launch', 'tiny', 'd3', '--model', 'vm', '--target', 'm2', '-c', 'vm.firmware=uefi'],
      { timeoutMs: 180_000 },
    );
    assert.equal(launched.code, 0, fail(launched));
    try {
      // OVMF finds no OS on it; what it writes into its store as it boots (its boot entries) is the guest's own.
      const template = await readFile('/usr/share/OVMF/OVMF_VARS_4M.fd');
      await eventually(
        'the firmware writes its store',
        async () => !(await readFile(store(m2.daemon))).equals(template),
        180_000,
      );
      await new Promise((r) => setTimeout(r, 5000));
      m1.daemon.ok(['stop', 'd3', '--timeout', '2']);
      const before = await readFile(store(m2.daemon));
      const cold = m1.daemon.cli(['move', 'd3', '--target', 'm1'], { timeoutMs: 300_000 });
      assert.equal(cold.code, 0, fail(cold));
      assert.equal(listed()?.location, 'm1');
      assert.ok((await readFile(store(m1.daemon))).equals(before), 'the cold move carried the store');
      assert.equal(existsSync(store(m2.daemon)), false, "m2's copy is gone");
      const started = m1.daemon.cli(['start', 'd3'], { timeoutMs: 180_000 });
      assert.equal(started.code, 0, fail(started));
      // Live: QEMU sends the flash with the RAM and writes it into the destination's store. Taken
      // once OVMF has written this boot's variables (its monotonic counter, its boot entries) and
      // stopped writing for 10 s.
      let running = before;
      let still = 0;
      await eventually(
        "the firmware's store settles",
        async () => {
          const now = await readFile(store(m1.daemon));
          still = now.equals(running) ? still + 1 : 0;
          running = now;
          return !now.equals(before) && still >= 100; // eventually polls every 100 ms
        },
        180_000,
      );
      const live = m2.daemon.cli(['move', 'd3', '--target', 'm2', '--live'], { timeoutMs: 300_000 });
      assert.equal(live.code, 0, fail(live));
      assert.deepEqual([listed()?.location, listed()?.status], ['m2', 'Running']);
      assert.equal(existsSync(store(m1.daemon)), false, "m1's copy is gone");
      m1.daemon.ok(['stop', 'd3', '--timeout', '2']);
      assert.ok((await readFile(store(m2.daemon))).equals(running), 'the live move carried the store');
    } finally {
      // Gone even when an assertion failed: the next test counts the guests.
      m1.daemon.cli(['delete', '--force', 'd3'], { timeoutMs: 120_000 });
    }
  });

  test('a guest of a disk image no member holds any more is refused in one line, and m2 is left without a trace of it', async () => {
    const [m1, m2] = cluster.hosts;
    assert.ok(m1 && m2);
    const media = path.join(m1.daemon.stateDir, 'test-media');
    const raw = Buffer.alloc(8 * 1024 * 1024);
    raw[510] = 0x55;
    raw[511] = 0xaa;
    randomBytes(128 * 1024).copy(raw, 4096);
    const file = path.join(media, 'gone.img');
    await writeFile(file, raw);
    m1.daemon.ok(['image', 'import', file, '--alias', 'gone']);
    const fp = createHash('sha256').update(raw).digest('hex');
    // m1's files lost (its disk failed, say): the record stays, and no member has the disk.
    await hostRunner().run(['rm', '-rf', path.join(m1.daemon.stateDir, 'images', fp)]);
    const r = m1.daemon.cli(['create', 'gone', 'd2', '--model', 'vm', '--target', 'm2'], {
      timeoutMs: 180_000,
    });
    refused(
      r,
      new RegExp(
        `Image ${fp.slice(0, 12)} is not on this member and no other member sent it \\(m1: .*\\): import it here`,
      ),
    );
    assert.equal(existsSync(path.join(m2.daemon.stateDir, 'images', fp)), false);
    assert.deepEqual(imageLeftovers(m2.daemon), []);
    // The failed create recorded nothing.
    assert.deepEqual(JSON.parse(m1.daemon.ok(['list', '--format', 'json'])), []);
  });
});
