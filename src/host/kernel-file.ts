import { open } from 'node:fs/promises';

/*
 * Asynchronous reads of the kernel's pseudo-files (/proc/PID/stat, mountinfo, a cgroup's
 * freezer.state). They report a size of 0, so `readFile` reads each into a fresh 64 KiB buffer
 * for a value of a few bytes (`readFileSync(path, 'utf8')` does not: it has a native path). The
 * guest controller's liveness pass reads two of them for every running ct guest, one pass after
 * another 2 s apart: 128 KiB of garbage a guest a pass, 125 MiB at 1,000 guests, malloc'd
 * outside the V8 heap and freed only by a collection (decision 0078). This reads into a 1 KiB
 * slice of Node's buffer pool instead, and into larger buffers only when a file fills it.
 */

const FIRST_BYTES = 1024;

/** A kernel pseudo-file's text; rejects as `readFile` does (ENOENT…). */
export async function readKernelFile(path: string): Promise<string> {
  const file = await open(path, 'r');
  try {
    let buffer = Buffer.allocUnsafe(FIRST_BYTES);
    let length = 0;
    for (;;) {
      if (length === buffer.length) {
        const larger = Buffer.allocUnsafe(buffer.length * 4);
        buffer.copy(larger, 0, 0, length);
        buffer = larger;
      }
      const { bytesRead } = await file.read(buffer, length, buffer.length - length, null);
      if (bytesRead === 0) break;
      length += bytesRead;
    }
    return buffer.toString('utf8', 0, length);
  } finally {
    await file.close();
  }
}
