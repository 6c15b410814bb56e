import type { Duplex } from 'node:stream';

/** What a VNC server said in its handshake, and how much of a first framebuffer update came. */
export interface RfbInit {
  version: string;
  width: number;
  height: number;
  name: string;
  /** Bytes of the server's answer to a full framebuffer update request (its first message). */
  updateBytes: number;
}

/**
 * Speaks the start of RFB 3.8 (RFC 6143) as a viewer would: version, security None, a shared
 * ClientInit, the ServerInit (screen size and desktop name), then one full, non-incremental
 * FramebufferUpdateRequest, whose answer (message type 0) must start to arrive.
 */
export function readRfbInit(stream: Duplex, timeoutMs = 30_000): Promise<RfbInit> {
  return new Promise((resolve, reject) => {
    let buffer = Buffer.alloc(0);
    let step = 0;
    const out: Partial<RfbInit> = {};
    const timer = setTimeout(() => fail(new Error(`RFB handshake stalled at step ${step}`)), timeoutMs);
    const fail = (e: Error) => {
      clearTimeout(timer);
      stream.off('data', onData);
      reject(e);
    };
    const take = (n: number): Buffer | undefined => {
      if (buffer.length < n) return undefined;
      const head = buffer.subarray(0, n);
      buffer = buffer.subarray(n);
      return head;
    };
    const onData = (chunk: Buffer) => {
      buffer = Buffer.concat([buffer, chunk]);
      for (;;) {
        if (step === 0) {
          const v = take(12);
          if (!v) return;
          out.version = v.toString('latin1').trim();
          stream.write('RFB 003.008\n');
          step = 1;
        } else if (step === 1) {
          const n = buffer[0];
          if (n === undefined || buffer.length < 1 + n) return;
          const types = [...take(1 + n)!.subarray(1)];
          if (!types.includes(1)) return fail(new Error(`no security None offered: ${types.join(',')}`));
          stream.write(Buffer.from([1]));
          step = 2;
        } else if (step === 2) {
          const r = take(4);
          if (!r) return;
          if (r.readUInt32BE(0) !== 0) return fail(new Error('security handshake failed'));
          stream.write(Buffer.from([1])); // ClientInit: shared
          step = 3;
        } else if (step === 3) {
          if (buffer.length < 24) return;
          const nameLength = buffer.readUInt32BE(20);
          const init = take(24 + nameLength);
          if (!init) return;
          out.width = init.readUInt16BE(0);
          out.height = init.readUInt16BE(2);
          out.name = init.subarray(24).toString('utf8');
          // FramebufferUpdateRequest: not incremental, the whole screen.
          const req = Buffer.alloc(10);
          req[0] = 3;
          req[1] = 0;
          req.writeUInt16BE(out.width, 6);
          req.writeUInt16BE(out.height, 8);
          stream.write(req);
          step = 4;
        } else {
          if (buffer.length < 4) return;
          if (buffer[0] !== 0)
            return fail(new Error(`expected a FramebufferUpdate, got message ${buffer[0]}`));
          clearTimeout(timer);
          stream.off('data', onData);
          resolve({ ...(out as RfbInit), updateBytes: buffer.length });
          return;
        }
      }
    };
    stream.on('data', onData);
    stream.on('error', (e) => fail(e));
  });
}
