import { Worker } from 'node:worker_threads';

/**
 * sha256 of large streams (a backup's payloads) computed in a worker thread, not on the daemon's
 * event loop (issue 20 §1, decision 0035 amended). The bytes are not copied to the worker: they
 * are in shared memory (`sharedBuffer`), which the worker reads in place while the caller writes
 * the same bytes to their file or FIFO. A profile of a vm export had sha256 at 22% of the
 * daemon's main thread, the largest single cost there.
 */

/** A sha256 being computed by the worker, one range of shared memory at a time. */
export interface OffloadedSha256 {
  /**
   * Hashes `bytes`, a view of a SharedArrayBuffer (`sharedBuffer`). Resolves once the worker has
   * read them: until then the caller must not change them. Updates are hashed in the order given.
   */
  update(bytes: Uint8Array): Promise<void>;
  /** The digest (hex) of every update, once they have all been hashed. Ends the hash. */
  digest(): Promise<string>;
  /** Ends the hash without a digest (a stream that failed or was cancelled). */
  discard(): void;
}

/** Memory the worker can read in place: a Buffer over a SharedArrayBuffer of `bytes` bytes. */
export function sharedBuffer(bytes: number): Buffer {
  return Buffer.from(new SharedArrayBuffer(Math.max(1, bytes)));
}

// The worker's code is inline (not a file beside this one), so that it runs the same from the
// sources and from a bundle.
// Each shared buffer is sent once per hash (its first update) and named by a number afterwards:
// posting a SharedArrayBuffer costs far more on the daemon's thread than posting a number.
const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const { createHash } = require('node:crypto');
const hashes = new Map();
parentPort.on('message', (m) => {
  try {
    if (m.op === 'update') {
      let h = hashes.get(m.id);
      if (!h) { h = { hash: createHash('sha256'), memories: new Map() }; hashes.set(m.id, h); }
      if (m.memory) h.memories.set(m.memoryId, m.memory);
      h.hash.update(new Uint8Array(h.memories.get(m.memoryId), m.offset, m.length));
      parentPort.postMessage({ seq: m.seq });
    } else if (m.op === 'digest') {
      const h = hashes.get(m.id);
      hashes.delete(m.id);
      parentPort.postMessage({ seq: m.seq, hex: (h ? h.hash : createHash('sha256')).digest('hex') });
    } else if (m.op === 'discard') {
      hashes.delete(m.id);
    }
  } catch (e) {
    hashes.delete(m.id);
    parentPort.postMessage({ seq: m.seq, error: String(e && e.message || e) });
  }
});
`;

/** How long an idle worker is kept for the next stream before it is ended. */
const IDLE_MS = 30_000;

interface Waiting {
  resolve: (hex: string | undefined) => void;
  reject: (e: Error) => void;
}

/** The one worker of the process, started on first use and ended after IDLE_MS without work. */
class HashThread {
  private worker: Worker | undefined;
  private readonly waiting = new Map<number, Waiting>();
  private seq = 0;
  private nextId = 0;
  private open = 0;
  private idle: NodeJS.Timeout | undefined;

  private start(): Worker {
    if (this.worker) return this.worker;
    const worker = new Worker(WORKER_SOURCE, { eval: true, name: 'trivisor-sha256' });
    worker.on('message', (m: { seq: number; hex?: string; error?: string }) => {
      const w = this.waiting.get(m.seq);
      this.waiting.delete(m.seq);
      this.settled();
      if (m.error !== undefined) w?.reject(new Error(`sha256 failed: ${m.error}`));
      else w?.resolve(m.hex);
    });
    const fail = (e: Error) => {
      if (this.worker !== worker) return;
      this.worker = undefined;
      const waiting = [...this.waiting.values()];
      this.waiting.clear();
      for (const w of waiting) w.reject(e);
    };
    worker.on('error', fail);
    worker.on('exit', (code) => fail(new Error(`the sha256 thread ended (exit code ${code})`)));
    this.worker = worker;
    return worker;
  }

  /** The worker keeps the process alive only while an answer is awaited. */
  private settled(): void {
    if (this.waiting.size > 0) return;
    this.worker?.unref();
    if (this.open > 0 || this.idle) return;
    this.idle = setTimeout(() => {
      this.idle = undefined;
      if (this.open > 0 || this.waiting.size > 0) return;
      const worker = this.worker;
      this.worker = undefined;
      void worker?.terminate();
    }, IDLE_MS).unref();
  }

  private ask(message: Record<string, unknown>): Promise<string | undefined> {
    const worker = this.start();
    if (this.idle) {
      clearTimeout(this.idle);
      this.idle = undefined;
    }
    const seq = this.seq++;
    return new Promise<string | undefined>((resolve, reject) => {
      this.waiting.set(seq, { resolve, reject });
      worker.ref();
      worker.postMessage({ ...message, seq });
    });
  }

  hash(): OffloadedSha256 {
    const id = this.nextId++;
    this.open++;
    let ended = false;
    /** An update that failed: the digest would be of part of the bytes, so it fails too. */
    let failed: Error | undefined;
    /** The shared buffers this hash has sent the worker, by the number that names them there. */
    const memories = new Map<SharedArrayBuffer, number>();
    const end = () => {
      if (ended) return false;
      ended = true;
      this.open--;
      memories.clear();
      return true;
    };
    return {
      update: async (bytes) => {
        if (ended) throw new Error('sha256 update after its end');
        if (!(bytes.buffer instanceof SharedArrayBuffer)) {
          throw new Error('sha256 offload needs bytes in shared memory (sharedBuffer)');
        }
        if (bytes.length === 0) return;
        const known = memories.get(bytes.buffer);
        const memoryId = known ?? memories.size;
        if (known === undefined) memories.set(bytes.buffer, memoryId);
        await this.ask({
          op: 'update',
          id,
          memoryId,
          ...(known === undefined && { memory: bytes.buffer }),
          offset: bytes.byteOffset,
          length: bytes.length,
        }).catch((e: Error) => {
          failed ??= e;
          throw e;
        });
      },
      digest: async () => {
        if (!end()) throw new Error('sha256 digest after its end');
        if (failed) {
          this.worker?.postMessage({ op: 'discard', id });
          this.settled();
          throw failed;
        }
        const hex = await this.ask({ op: 'digest', id });
        this.settled();
        return hex as string;
      },
      discard: () => {
        if (!end()) return;
        this.worker?.postMessage({ op: 'discard', id });
        this.settled();
      },
    };
  }
}

const thread = new HashThread();

/** A new sha256, computed by the process's hashing thread. */
export function offloadedSha256(): OffloadedSha256 {
  return thread.hash();
}

/**
 * `chunks` (each in shared memory, valid until the next is asked for) handed on as they come,
 * each hashed by `hash` while its consumer has it; the next is asked for only once the worker
 * has read the last, so that the source may reuse its memory.
 */
export async function* hashedOnTheWay(
  chunks: AsyncIterable<Buffer>,
  hash: OffloadedSha256,
): AsyncGenerator<Buffer> {
  let hashing: Promise<void> = Promise.resolve();
  try {
    for await (const chunk of chunks) {
      hashing = hash.update(chunk);
      // A failed update is thrown below, before the next chunk; never unhandled meanwhile.
      hashing.catch(() => {});
      yield chunk;
      await hashing;
    }
  } finally {
    await hashing.catch(() => {});
  }
}
