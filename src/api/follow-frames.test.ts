import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { type FollowEvent, FollowFrameReader, FollowFramesDamaged, FRAME, frame } from './follow-frames.ts';

/** Reads `body` split at every `step` bytes. */
function read(body: Buffer, step: number): FollowEvent[] {
  const reader = new FollowFrameReader();
  const events: FollowEvent[] = [];
  for (let at = 0; at < body.length; at += step) events.push(...reader.push(body.subarray(at, at + step)));
  return events;
}

/** The data events put into one file. */
function assemble(events: FollowEvent[]): Buffer {
  const out = Buffer.alloc(16);
  for (const e of events) if (e.type === 'data') e.bytes.copy(out, e.offset);
  return out;
}

describe('followed download frames', () => {
  const body = Buffer.concat([
    frame(FRAME.data, 0, Buffer.from('00000000')),
    frame(FRAME.data, 8, Buffer.from('abcdefgh')),
    frame(FRAME.data, 0, Buffer.from('HEAD')),
    frame(FRAME.end, 16),
  ]);

  for (const step of [1, 5, 13, body.length]) {
    it(`puts every data frame at its offset, split every ${step} bytes, and ends with the size`, () => {
      const events = read(body, step);
      assert.equal(assemble(events).toString(), 'HEAD0000abcdefgh');
      assert.deepEqual(events.at(-1), { type: 'end', sizeBytes: 16 });
    });
  }

  it('reads a failure frame as the reason, and a reader that saw neither end nor failure is not finished', () => {
    const failed = new FollowFrameReader();
    assert.deepEqual(
      failed.push(frame(FRAME.failed, 0, Buffer.from('Cannot back up guest g: the disk is full'))),
      [{ type: 'failed', message: 'Cannot back up guest g: the disk is full' }],
    );
    assert.equal(failed.finished, true);
    const cut = new FollowFrameReader();
    cut.push(body.subarray(0, 30));
    assert.equal(cut.finished, false);
  });

  it('refuses an unknown frame type and bytes after the end', () => {
    assert.throws(() => new FollowFrameReader().push(frame(0x51, 0, Buffer.from('x'))), FollowFramesDamaged);
    assert.throws(
      () => new FollowFrameReader().push(Buffer.concat([frame(FRAME.end, 0), Buffer.from('x')])),
      /after the last frame/,
    );
  });
});
