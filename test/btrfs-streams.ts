/**
 * Reads and writes `btrfs send` streams (the layout of the kernel's fs/btrfs/send.h), so that
 * tests can craft the streams a hostile archive could hold: a real stream from `btrfs send`,
 * decoded, edited and encoded again with valid CRCs, is what `btrfs receive` would apply.
 */

import { crc32c } from '../src/drivers/ct/btrfs-stream-check.ts';

const MAGIC = Buffer.from('btrfs-stream\0', 'latin1');

/** One command: its number and its attributes in stream order. */
export interface SendCommand {
  cmd: number;
  attrs: Array<[type: number, value: Buffer]>;
}

/** Decodes a whole (version 1) stream, checking each command's CRC. */
export function decodeStream(buf: Buffer): { version: number; commands: SendCommand[] } {
  if (!buf.subarray(0, MAGIC.length).equals(MAGIC)) throw new Error('not a btrfs send stream');
  const version = buf.readUInt32LE(MAGIC.length);
  if (version !== 1) throw new Error(`stream version ${version}: only version 1 is decoded here`);
  const commands: SendCommand[] = [];
  for (let at = MAGIC.length + 4; at < buf.length; ) {
    const len = buf.readUInt32LE(at);
    const cmd = buf.readUInt16LE(at + 4);
    const crc = buf.readUInt32LE(at + 6);
    const whole = Buffer.from(buf.subarray(at, at + 10 + len));
    whole.writeUInt32LE(0, 6);
    if (crc32c(whole) !== crc) throw new Error(`command ${cmd} at ${at}: CRC mismatch`);
    const attrs: SendCommand['attrs'] = [];
    for (let a = at + 10; a < at + 10 + len; ) {
      const type = buf.readUInt16LE(a);
      const alen = buf.readUInt16LE(a + 2);
      attrs.push([type, Buffer.from(buf.subarray(a + 4, a + 4 + alen))]);
      a += 4 + alen;
    }
    commands.push({ cmd, attrs });
    at += 10 + len;
  }
  return { version, commands };
}

/** Encodes commands as a version 1 stream, each with its CRC. */
export function encodeStream(commands: readonly SendCommand[]): Buffer {
  const version = Buffer.alloc(4);
  version.writeUInt32LE(1);
  const parts = [MAGIC, version];
  for (const { cmd, attrs } of commands) {
    const body = Buffer.concat(
      attrs.map(([type, value]) => {
        const head = Buffer.alloc(4);
        head.writeUInt16LE(type, 0);
        head.writeUInt16LE(value.length, 2);
        return Buffer.concat([head, value]);
      }),
    );
    const head = Buffer.alloc(10);
    head.writeUInt32LE(body.length, 0);
    head.writeUInt16LE(cmd, 4);
    const whole = Buffer.concat([head, body]);
    whole.writeUInt32LE(crc32c(whole), 6);
    parts.push(whole);
  }
  return Buffer.concat(parts);
}

/** A little-endian u64 attribute value. */
export const u64 = (n: number | bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt(n));
  return b;
};

/** A UUID as `btrfs subvolume show` prints it, as the 16 bytes a stream carries. */
export const uuidBytes = (uuid: string): Buffer => Buffer.from(uuid.replaceAll('-', ''), 'hex');
