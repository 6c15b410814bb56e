import { request as httpRequest, type IncomingMessage } from 'node:http';
import { asTrivisorError, notFound } from '../core/errors.ts';
import type { Logger } from '../host/logger.ts';
import type { ImageFiles } from '../images/image-files.ts';
import type { ImageMetadata } from '../images/image-metadata.ts';
import type { MemberClient, MemberTarget } from './member-client.ts';

/**
 * Brings an image's files to this member from one that has them (decision 0034): the image
 * record is the cluster's, its files each member's cache. The members are asked in turn; the
 * first that sends the tree wins, and the tree must arrive with the digest its sender names
 * (image-files.ts `receiveTree`), or nothing is added.
 */
export function createImageFetcher(deps: {
  files: Pick<ImageFiles, 'receiveTree'>;
  client: MemberClient;
  /** The other members, Online ones first. */
  members: () => Promise<MemberTarget[]>;
  log: Logger;
}): (fingerprint: string) => Promise<void> {
  return async (fingerprint) => {
    const reasons: string[] = [];
    for (const member of await deps.members()) {
      try {
        const socket = await deps.client.connect(member);
        const res = await new Promise<IncomingMessage>((resolve, reject) => {
          const req = httpRequest(
            {
              createConnection: () => socket,
              path: `/1.0/cluster/image-trees/${fingerprint}`,
              headers: { host: member.name },
            },
            resolve,
          );
          req.on('error', reject);
          req.end();
        });
        if (res.statusCode !== 200) {
          const chunks: Buffer[] = [];
          for await (const c of res) chunks.push(c as Buffer);
          socket.destroy();
          const error = (() => {
            try {
              return String(JSON.parse(Buffer.concat(chunks).toString()).error);
            } catch {
              return `answered ${res.statusCode}`;
            }
          })();
          reasons.push(`${member.name}: ${error}`);
          continue;
        }
        const treeDigest = String(res.headers['x-trivisor-tree-digest'] ?? '');
        const metadata = JSON.parse(
          Buffer.from(String(res.headers['x-trivisor-image-metadata'] ?? ''), 'base64url').toString(),
        ) as ImageMetadata;
        const started = Date.now();
        try {
          await deps.files.receiveTree(fingerprint, { treeDigest, metadata }, res);
        } finally {
          socket.destroy();
        }
        deps.log.info(
          { fingerprint, from: member.name, ms: Date.now() - started },
          'fetched an image from another member',
        );
        return;
      } catch (e) {
        reasons.push(`${member.name}: ${asTrivisorError(e).message}`);
      }
    }
    throw notFound(
      `Image ${fingerprint.slice(0, 12)} is not on this member and no other member sent it${
        reasons.length > 0 ? ` (${reasons.join('; ')})` : ''
      }: import it here`,
    );
  };
}
