import { type Static, Type } from '@sinclair/typebox';

/*
 * The daemon's backup directory on the wire (decisions 0070, 0074, 0077): what
 * `GET /1.0/backups?recursion=1` lists and `GET /1.0/backups/{guest}/{archive}` shows.
 */

/** One archive of the backup directory: what `POST /1.0/backups/import` takes, and what it would restore. */
export const BackupDirectoryArchiveSchema = Type.Object({
  guest: Type.String({ description: "The guest's folder in the backup directory" }),
  name: Type.String({ description: "The archive's file name" }),
  archive: Type.String({ description: 'GUEST/NAME, what POST /1.0/backups/import takes' }),
  sizeBytes: Type.Number(),
  createdAt: Type.String({
    description: "When it was taken (from its name in the scheduled backups' layout, else the file's mtime)",
  }),
  kind: Type.Union(
    [Type.Literal('full'), Type.Literal('incremental'), Type.Literal('whole'), Type.Literal('other')],
    {
      description:
        'full/incremental: a link of a chain (decision 0062); whole: a whole archive; other: a name outside the layout, imported alone',
    },
  ),
  chain: Type.Optional(Type.String()),
  sequence: Type.Optional(Type.Number()),
  parent: Type.Optional(Type.String({ description: "An incremental's link before it (its file name)" })),
  restorable: Type.Boolean({
    description: 'False for an incremental whose earlier links are not all in the directory',
  }),
  problem: Type.Optional(Type.String({ description: 'Why it cannot be restored' })),
});

export type BackupDirectoryArchiveWire = Static<typeof BackupDirectoryArchiveSchema>;

/**
 * What the operation of a live restore (`import --live`, decision 0063) says of its times, in
 * milliseconds from the operation's start: `runningAfterMs` once the guest runs on the archive,
 * `completedAfterMs` once its disk is wholly its own (issue 20's time to running against time to
 * complete, decision 0082). Absent until each happens.
 */
export interface LiveRestoreTimes {
  runningAfterMs?: number;
  completedAfterMs?: number;
}

/** The live restore's times in an operation's metadata (none for any other operation). */
export function liveRestoreTimes(metadata: Readonly<Record<string, unknown>>): LiveRestoreTimes {
  const ms = (v: unknown) => (typeof v === 'number' && Number.isFinite(v) && v >= 0 ? v : undefined);
  const running = ms(metadata.runningAfterMs);
  const completed = ms(metadata.completedAfterMs);
  return {
    ...(running !== undefined && { runningAfterMs: running }),
    ...(completed !== undefined && { completedAfterMs: completed }),
  };
}

/** `3140` → `3.1 s`: a live restore's times as both clients show them. */
export const secondsText = (ms: number): string => `${(ms / 1000).toFixed(1)} s`;
