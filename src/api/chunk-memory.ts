/**
 * Giving a received chunk's memory back at once (decision 0100). Node's HTTP parser hands every
 * 64 KiB of a request's body over as a new buffer; left to the garbage collector, a GiB of them
 * made V8 run a full mark-compact every 64 MiB or so (external memory pressure, decision 0096),
 * most of the daemon's CPU in an import. `ArrayBuffer.transfer(0)` detaches the chunk's memory and
 * V8 takes its bytes off the external memory it counts: no collection is needed for it.
 */

/** Whether `chunk` is the whole of its ArrayBuffer (as an HTTP body's chunks are), so that it can be released. */
export const ownsItsMemory = (chunk: Buffer): chunk is Buffer<ArrayBuffer> =>
  chunk.byteOffset === 0 && chunk.buffer instanceof ArrayBuffer && chunk.buffer.byteLength === chunk.length;

/** Detaches `buffer`: every view of it is empty from now on. Only for memory no one else holds. */
export function releaseChunk(buffer: ArrayBuffer): void {
  if (!buffer.detached) buffer.transfer(0);
}
