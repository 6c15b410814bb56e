import { createReadStream } from 'node:fs';
import { stat } from 'node:fs/promises';
import { request as httpRequest, type IncomingMessage } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { notFound, TrivisorError, unavailable } from '../core/errors.ts';
import type { ProcessIdentity } from '../core/types.ts';
import type { IncomingEndpoints, MigrationTls } from '../drivers/live-migration.ts';
import type { MoveTransport } from '../services/guest-move.ts';
import { type MemberClient, type MemberTarget, metadataOfAnswer } from './member-client.ts';

/**
 * The members' side of a move (decision 0040): the archive of a guest goes to the destination
 * as the body of one request over the members' mutual TLS, streamed from the file; the
 * destination answers once it has applied it, or with the error envelope that says why not.
 * A live move (decision 0042) asks the destination to get ready and, after the switch-over, to
 * run the guest, over the same TLS; the migration's own traffic goes between the QEMUs.
 */
export function createMoveTransport(deps: {
  client: MemberClient;
  /** For a live move's prepare, which makes a disk and starts QEMU before it answers (a longer timeout). */
  liveClient?: MemberClient;
  /** The member's name and member-API address, from the cluster's records. */
  member: (name: string) => Promise<MemberTarget | undefined>;
}): MoveTransport {
  const targetOf = async (name: string) => {
    const target = await deps.member(name);
    if (!target) throw notFound(`Member ${name} not found; see trivisor cluster list`);
    return target;
  };
  return {
    async send(member, guest, archivePath, signal) {
      const target = await targetOf(member);
      const size = (await stat(archivePath)).size;
      const socket = await deps.client.connect(target);
      try {
        const req = httpRequest({
          createConnection: () => socket,
          method: 'POST',
          path: `/1.0/cluster/guest-moves/${guest}`,
          headers: {
            host: target.name,
            'content-type': 'application/octet-stream',
            'content-length': String(size),
          },
          signal,
        });
        const answered = new Promise<IncomingMessage>((resolve, reject) => {
          req.on('response', resolve);
          req.on('error', reject);
        });
        // A destination that refuses early answers before it has read the body: its answer, not the
        // broken upload, says why.
        const piping = pipeline(createReadStream(archivePath), req).then(
          () => undefined,
          (e: unknown) => e as Error,
        );
        const res = await answered.catch(async (e: unknown) => {
          throw (await piping) ?? e;
        });
        const chunks: Buffer[] = [];
        for await (const c of res) chunks.push(c as Buffer);
        metadataOfAnswer(res.statusCode ?? 500, Buffer.concat(chunks), `member ${target.name}`);
        // A success is the destination's word that it read and applied the whole archive: the
        // upload's own end may still be seen as "Premature close" (the destination closes the
        // connection once it answered, sometimes before this side saw its last write finish),
        // which must not undo a move that arrived.
        await piping;
      } catch (e) {
        // Its answer's error as it sent it; an abort as the caller's signal says (member-watch.ts).
        if (e instanceof TrivisorError || signal.aborted) throw e;
        // The connection broken under the transfer (its daemon died, its host went away): a
        // one-line reason, not the socket's "socket hang up".
        throw unavailable(`${target.name} broke the connection before it answered (${(e as Error).message})`);
      } finally {
        socket.destroy();
      }
    },
    async discard(member, guest) {
      await deps.client.request(await targetOf(member), 'DELETE', `/1.0/cluster/guest-moves/${guest}`);
    },
    async prepareLive(member, guest, signal) {
      const target = await targetOf(member);
      signal.throwIfAborted();
      const answer = await (deps.liveClient ?? deps.client).request<{
        process: ProcessIdentity;
        endpoints: IncomingEndpoints;
        tls: MigrationTls;
      }>(target, 'POST', `/1.0/cluster/live-moves/${guest}`, {});
      return answer.metadata;
    },
    async finishLive(member, guest) {
      await deps.client.request(
        await targetOf(member),
        'POST',
        `/1.0/cluster/live-moves/${guest}/finish`,
        {},
      );
    },
  };
}
