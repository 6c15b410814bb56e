import { request as httpRequest, type IncomingMessage } from 'node:http';
import { asTrivisorError, notFound } from '../core/errors.ts';
import type { ImageRecord } from '../core/types.ts';
import type { Logger } from '../host/logger.ts';
import { DISK_DIGEST_PROPERTY } from '../images/disk-image.ts';
import type { ImageFiles } from '../images/image-files.ts';
import type { ImageMetadata } from '../images/image-metadata.ts';
import type { MemberClient, MemberTarget } from './member-client.ts';

/**
 * Brings an image's files to this member from one that has them (decision 0034): the image
 * record is the cluster's, its files each member's cache. The members are asked in turn; the
 * first that sends them wins. A tree must arrive with the digest its sender names
 * (image-files.ts `receiveTree`); a disk image's qcow2 with the digest its record holds (the
 * sender's, for an image imported before records held one: image-files.ts `receiveDisk`), or
 * nothing is added.
 */
export function createImageFetcher(deps: {
  files: Pick<ImageFiles, 'receiveTree' | 'receiveDisk'>;
  client: Pick<MemberClient, 'connect'>;
  /** The other members, Online ones first. */
  members: () => Promise<MemberTarget[]>;
  log: Logger;
}): (image: Pick<ImageRecord, 'fingerprint' | 'type' | 'properties'>) => Promise<void> {
  return async (image) => {
    const { fingerprint } = image;
    const disk = image.type === 'disk';
    const reasons: string[] = [];
    for (const member of await deps.members()) {
      try {
        const socket = await deps.client.connect(member);
        const res = await new Promise<IncomingMessage>((resolve, reject) => {
          const req = httpRequest(
            {
              createConnection: () => socket,
              path: `/1.0/cluster/${disk ? 'image-disks' : 'image-trees'}/${fingerprint}`,
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
        const metadata = JSON.parse(
          Buffer.from(String(res.headers['x-trivisor-image-metadata'] ?? ''), 'base64url').toString(),
        ) as ImageMetadata;
        const started = Date.now();
        try {
          if (disk) {
            // The record is the cluster's word on what the disk is; the sender's only for older images.
            const diskDigest =
              image.properties[DISK_DIGEST_PROPERTY] ?? String(res.headers['x-trivisor-disk-digest'] ?? '');
            await deps.files.receiveDisk(fingerprint, { diskDigest, metadata }, res);
          } else {
            const treeDigest = String(res.headers['x-trivisor-tree-digest'] ?? '');
            await deps.files.receiveTree(fingerprint, { treeDigest, metadata }, res);
          }
        } finally {
          socket.destroy();
        }
        deps.log.info(
          { fingerprint, from: member.name, ms: Date.now() - started },
          disk ? 'fetched a disk image from another member' : 'fetched an image from another member',
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
