import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { promisify } from 'node:util';
import { readThroughFifo } from './fifo-stream.ts';

const run = promisify(execFile);
const dir = mkdtempSync(path.join(os.tmpdir(), 'trivisor-fifo-stream-'));
after(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const fifo = () => {
  const f = path.join(dir, `f${n++}`);
  execFileSync('mkfifo', [f]);
  return f;
};

describe('readThroughFifo', () => {
  const source = path.join(dir, 'source');
  writeFileSync(source, randomBytes(9 * 2 ** 20 + 4321));
  const want = readFileSync(source);

  it('hands over every byte a command writes, in order, each chunk read before the next overwrites it', async () => {
    const parts: Buffer[] = [];
    let hash = createHash('sha256');
    const got = await readThroughFifo(
      fifo(),
      (p) => run('dd', [`if=${source}`, `of=${p}`, 'bs=1M', 'status=none']),
      async (chunks) => {
        for await (const c of chunks) {
          hash.update(c);
          parts.push(Buffer.from(c));
          // A consumer that takes its time: the producer must wait, not overwrite the chunk.
          if (parts.length % 16 === 0) await new Promise((r) => setTimeout(r, 5));
        }
        return hash.digest('hex');
      },
    );
    hash = createHash('sha256');
    assert.equal(got, hash.update(want).digest('hex'));
    assert.ok(Buffer.concat(parts).equals(want));
  });

  it('fails when the producer fails after writing part of its output', async () => {
    await assert.rejects(
      readThroughFifo(
        fifo(),
        (p) => run('sh', ['-c', `head -c 100000 ${source} > ${p}; exit 3`]),
        async (chunks) => {
          let bytes = 0;
          for await (const c of chunks) bytes += c.length;
          return bytes;
        },
      ),
      /Command failed/,
    );
  });

  it("a consumer's failure ends the producer (broken pipe) and is the error thrown", async () => {
    await assert.rejects(
      readThroughFifo(
        fifo(),
        (p) => run('dd', [`if=${source}`, `of=${p}`, 'bs=1M', 'status=none']),
        async (chunks) => {
          for await (const _ of chunks) throw new Error('consumer gave up');
        },
      ),
      /consumer gave up/,
    );
  });

  it('a producer that never opens the FIFO ends the read with nothing', async () => {
    const got = await readThroughFifo(
      fifo(),
      async () => {},
      async (chunks) => {
        let bytes = 0;
        for await (const c of chunks) bytes += c.length;
        return bytes;
      },
    );
    assert.equal(got, 0);
  });
});
