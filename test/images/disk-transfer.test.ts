import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { readdir, readFile, stat, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { PassThrough, Readable, Transform } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { silentLogger } from '../../src/host/logger.ts';
import { hostRunner } from '../../src/host/runner.ts';
import { DISK_DIGEST_PROPERTY } from '../../src/images/disk-image.ts';
import { type ImageFiles, imageFiles } from '../../src/images/image-files.ts';
import { makeRunDir, removeRunDir } from '../leftovers.ts';

const runner = hostRunner();
const MiB = 1024 * 1024;

/**
 * A disk image between two members' image stores (decision 0034): the stored qcow2 sent as it
 * is, written sparse on arrival, and refused with nothing left unless its bytes hash to the
 * digest the image's record holds.
 */
describe('disk images between members', () => {
  let dir = '';
  let sender: ImageFiles;
  let receiver: ImageFiles;
  let receiverState = '';
  let fingerprint = '';

  /** What the receiver's images/ holds besides complete images. */
  const leftovers = async (): Promise<string[]> =>
    (await readdir(join(receiverState, 'images'))).filter((n) => !/^[0-9a-f]{64}$/.test(n));

  before(async () => {
    dir = await makeRunDir('disk-transfer');
    sender = imageFiles(join(dir, 'm1'), { runner, log: silentLogger() });
    receiverState = join(dir, 'm2');
    receiver = imageFiles(receiverState, { runner, log: silentLogger() });
    // A 64 MiB raw whole disk: a boot signature, and data at a few places among zeros.
    const raw = Buffer.alloc(64 * MiB);
    raw[510] = 0x55;
    raw[511] = 0xaa;
    randomBytes(3 * MiB).copy(raw, MiB);
    randomBytes(100_000).copy(raw, 40 * MiB);
    const path = join(dir, 'tiny.img');
    await writeFile(path, raw);
    const added = await sender.importDisk(path, { format: 'raw', description: 'tiny' });
    fingerprint = added.fingerprint;
    assert.equal(fingerprint, createHash('sha256').update(raw).digest('hex'));
  });
  after(async () => {
    await removeRunDir(dir);
  });

  test("an import records the stored qcow2's sha256; the copy that arrives is the same bytes, sparse, root's alone and usable", async () => {
    const stored = join(dir, 'm1', 'images', fingerprint, 'disk.qcow2');
    const digest = createHash('sha256')
      .update(await readFile(stored))
      .digest('hex');
    const { metadata } = await sender.metadata(fingerprint);
    assert.equal(metadata.properties[DISK_DIGEST_PROPERTY], digest);

    const sent = await sender.exportDisk(fingerprint);
    assert.equal(sent.diskDigest, digest);
    assert.equal(sent.sizeBytes, (await stat(stored)).size);
    const added = await receiver.receiveDisk(
      fingerprint,
      { diskDigest: digest, metadata: sent.metadata },
      sent.stream,
    );
    assert.equal(added.fingerprint, fingerprint);
    const copy = join(receiverState, 'images', fingerprint, 'disk.qcow2');
    assert.ok((await readFile(copy)).equals(await readFile(stored)), 'the same bytes');
    const st = await stat(copy);
    assert.equal(st.mode & 0o777, 0o400);
    assert.ok(
      st.blocks * 512 <= (await stat(stored)).blocks * 512 + 64 * 1024,
      'no larger on disk than its source',
    );
    assert.ok(await receiver.exists(fingerprint));
    assert.equal(await receiver.baseDisk(fingerprint), copy, 'guests are overlays on the copy');
    assert.equal((await receiver.metadata(fingerprint)).metadata.properties[DISK_DIGEST_PROPERTY], digest);
    assert.deepEqual(await leftovers(), []);
    await receiver.remove(fingerprint);
  });

  test('a disk that arrives changed is refused, and nothing is left', async () => {
    const sent = await sender.exportDisk(fingerprint);
    let flipped = false;
    const corrupt = new Transform({
      transform(chunk: Buffer, _enc, cb) {
        const c = Buffer.from(chunk);
        if (!flipped && c.length > 1000) {
          c[1000] = (c[1000] ?? 0) ^ 0xff;
          flipped = true;
        }
        cb(null, c);
      },
    });
    await assert.rejects(
      receiver.receiveDisk(
        fingerprint,
        { diskDigest: sent.diskDigest, metadata: sent.metadata },
        sent.stream.pipe(corrupt),
      ),
      (e: Error & { code?: string }) => {
        assert.equal(e.code, 'FailedPrecondition');
        assert.match(
          e.message,
          /^Disk image [0-9a-f]{12} from another member arrived changed: its sha256 is [0-9a-f]{12}, the image's [0-9a-f]{12}; nothing was added$/,
        );
        return true;
      },
    );
    assert.equal(await receiver.exists(fingerprint), false);
    assert.deepEqual(await leftovers(), []);
  });

  test('a disk that breaks off on the way is refused, and nothing is left', async () => {
    const sent = await sender.exportDisk(fingerprint);
    const cut = new PassThrough();
    let passed = 0;
    sent.stream.on('data', (c: Buffer) => {
      passed += c.length;
      if (passed > 2 * MiB) {
        sent.stream.destroy();
        cut.destroy(new Error('socket hang up'));
      } else cut.write(c);
    });
    await assert.rejects(
      receiver.receiveDisk(fingerprint, { diskDigest: sent.diskDigest, metadata: sent.metadata }, cut),
      (e: Error & { code?: string }) => {
        assert.equal(e.code, 'Unavailable');
        assert.match(
          e.message,
          /^Disk image [0-9a-f]{12} from another member broke off on the way: socket hang up$/,
        );
        return true;
      },
    );
    assert.equal(await receiver.exists(fingerprint), false);
    assert.deepEqual(await leftovers(), []);
  });

  test('a missing image is not sent, and a disk that comes without a digest is refused', async () => {
    await assert.rejects(sender.exportDisk('f'.repeat(64)), /is not on this host/);
    await assert.rejects(
      receiver.receiveDisk(
        fingerprint,
        { diskDigest: 'nope', metadata: (await sender.metadata(fingerprint)).metadata },
        Readable.from([]),
      ),
      /came without the digest of its disk/,
    );
    assert.deepEqual(await leftovers(), []);
  });
});
