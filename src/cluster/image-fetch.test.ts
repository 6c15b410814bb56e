import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Server } from 'node:http';
import { type AddressInfo, connect } from 'node:net';
import type { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import type { TLSSocket } from 'node:tls';
import { failedPrecondition } from '../core/errors.ts';
import { silentLogger } from '../host/logger.ts';
import { DISK_DIGEST_PROPERTY } from '../images/disk-image.ts';
import type { ImageMetadata } from '../images/image-metadata.ts';
import { createImageFetcher } from './image-fetch.ts';

const FP = 'a'.repeat(64);
const RECORDED = 'b'.repeat(64);
const metadata: ImageMetadata = {
  description: 'tiny',
  os: 'unknown',
  release: '',
  architecture: 'x86_64',
  source: 'import',
  type: 'disk',
  properties: {},
};

describe('createImageFetcher', () => {
  let server: Server;
  let port = 0;
  const asked: Array<{ member: string; path: string }> = [];
  before(async () => {
    // Two members behind one server, told apart by the Host header the fetcher sends.
    server = createServer((req, res) => {
      asked.push({ member: String(req.headers.host), path: String(req.url) });
      if (req.headers.host === 'm2') {
        res.writeHead(404, { 'content-type': 'application/json' });
        res.end(JSON.stringify({ type: 'error', error: `Image ${FP.slice(0, 12)} is not on this host` }));
        return;
      }
      res.writeHead(200, {
        'x-trivisor-disk-digest': 'c'.repeat(64),
        'x-trivisor-tree-digest': 'd'.repeat(64),
        'x-trivisor-image-metadata': Buffer.from(JSON.stringify(metadata)).toString('base64url'),
      });
      res.end('the bytes');
    });
    server.listen(0, '127.0.0.1');
    await once(server, 'listening');
    port = (server.address() as AddressInfo).port;
  });
  after(() => server.close());

  const client = {
    connect: async () => {
      const socket = connect(port, '127.0.0.1');
      await once(socket, 'connect');
      return socket as unknown as TLSSocket;
    },
  };
  const members = async () => [
    { name: 'm2', address: 'x' },
    { name: 'm3', address: 'x' },
  ];
  const read = async (stream: Readable) => {
    let text = '';
    for await (const c of stream) text += String(c);
    return text;
  };

  test("a disk image is asked for as a disk, from each member in turn, and verified against its record's digest, not the sender's", async () => {
    asked.length = 0;
    const received: Array<{ fingerprint: string; diskDigest: string; body: string }> = [];
    const fetch = createImageFetcher({
      files: {
        receiveTree: () => Promise.reject(new Error('not a tree')),
        async receiveDisk(fingerprint, sent, disk) {
          received.push({ fingerprint, diskDigest: sent.diskDigest, body: await read(disk) });
          return { fingerprint, metadata: sent.metadata, sizeBytes: 9 };
        },
      },
      client,
      members,
      log: silentLogger(),
    });
    await fetch({ fingerprint: FP, type: 'disk', properties: { [DISK_DIGEST_PROPERTY]: RECORDED } });
    assert.deepEqual(asked, [
      { member: 'm2', path: `/1.0/cluster/image-disks/${FP}` },
      { member: 'm3', path: `/1.0/cluster/image-disks/${FP}` },
    ]);
    assert.deepEqual(received, [{ fingerprint: FP, diskDigest: RECORDED, body: 'the bytes' }]);
    // An image recorded before its disk's digest was: the sender's word.
    received.length = 0;
    await fetch({ fingerprint: FP, type: 'disk', properties: {} });
    assert.equal(received[0]?.diskDigest, 'c'.repeat(64));
  });

  test('a tree image is asked for as a tree', async () => {
    asked.length = 0;
    const trees: string[] = [];
    const fetch = createImageFetcher({
      files: {
        async receiveTree(fingerprint, sent, tar) {
          trees.push(`${sent.treeDigest} ${await read(tar)}`);
          return { fingerprint, metadata: sent.metadata, sizeBytes: 9 };
        },
        receiveDisk: () => Promise.reject(new Error('not a disk')),
      },
      client,
      members: async () => [{ name: 'm3', address: 'x' }],
      log: silentLogger(),
    });
    await fetch({ fingerprint: FP, properties: {} });
    assert.deepEqual(asked, [{ member: 'm3', path: `/1.0/cluster/image-trees/${FP}` }]);
    assert.deepEqual(trees, [`${'d'.repeat(64)} the bytes`]);
  });

  test('a disk that arrives changed, or no member that has it, is NotFound in one line naming each member and why', async () => {
    const fetch = createImageFetcher({
      files: {
        receiveTree: () => Promise.reject(new Error('not a tree')),
        async receiveDisk(fingerprint, sent, disk) {
          await read(disk);
          throw failedPrecondition(
            `Disk image ${fingerprint.slice(0, 12)} from another member arrived changed: its sha256 is 0123, the image's ${sent.diskDigest.slice(0, 12)}; nothing was added`,
          );
        },
      },
      client,
      members,
      log: silentLogger(),
    });
    await assert.rejects(
      fetch({ fingerprint: FP, type: 'disk', properties: { [DISK_DIGEST_PROPERTY]: RECORDED } }),
      (e: Error & { code?: string }) => {
        assert.equal(e.code, 'NotFound');
        assert.doesNotMatch(e.message, /\n/);
        assert.match(
          e.message,
          /^Image aaaaaaaaaaaa is not on this member and no other member sent it \(m2: Image aaaaaaaaaaaa is not on this host; m3: Disk image aaaaaaaaaaaa from another member arrived changed: .*nothing was added\): import it here$/,
        );
        return true;
      },
    );
  });
});
