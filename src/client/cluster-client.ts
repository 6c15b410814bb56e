import type { Static } from '@sinclair/typebox';
import type {
  BootstrapBody,
  ClusterInfoSchema,
  ClusterMemberSchema,
  ClusterMove,
  JoinTokenSchema,
  RebalanceResult,
} from '../api/cluster-schemas.ts';
import type { EvacuateMode, Operation } from '../core/types.ts';

/** What `GET /1.0/cluster` answers. */
export type ClusterInfo = Static<typeof ClusterInfoSchema>;
/** A member as `cluster list` shows it. */
export type ClusterMemberInfo = Static<typeof ClusterMemberSchema>;
export type { ClusterMove, RebalanceResult };
/** A join token as `cluster add` prints it. */
export type JoinTokenInfo = Static<typeof JoinTokenSchema>;

/** Cluster membership (decision 0032): the host admin's. */
export interface ClusterClient {
  clusterInfo(): Promise<ClusterInfo>;
  /** Answers once the bootstrap is prepared; the daemon then restarts on etcd. */
  bootstrapCluster(request: BootstrapBody): Promise<ClusterInfo>;
  createJoinToken(name: string, options?: { expiry?: string }): Promise<JoinTokenInfo>;
  /** Answers once this host is a member; the daemon then restarts on the cluster's store. */
  joinCluster(token: string, address: string): Promise<ClusterInfo>;
  listMembers(): Promise<ClusterMemberInfo[]>;
  getMember(name: string): Promise<ClusterMemberInfo>;
  removeMember(name: string, options?: { force?: boolean }): Promise<void>;
  /** Evacuates a member (its guests leave it; `mode` for those that do not say) or restores it (decision 0041). */
  changeMemberState(
    name: string,
    request: { action: 'evacuate' | 'restore'; mode?: EvacuateMode },
  ): Promise<Operation>;
  /** The cluster-wide keys set (`cluster.rebalance.*`, decision 0053). */
  clusterConfig(): Promise<Record<string, string>>;
  /** Sets keys (null unsets one); one bad key changes nothing. Answers the keys now set. */
  updateClusterConfig(config: Record<string, string | null>): Promise<Record<string, string>>;
  /** The rebalancer's recent moves, newest first, each explained. */
  clusterMoves(): Promise<ClusterMove[]>;
  /** One rebalancing cycle now; `dryRun` plans without moving anything. */
  rebalanceCluster(options?: { dryRun?: boolean }): Promise<RebalanceResult>;
}

type Call = <T>(method: string, path: string, json?: unknown) => Promise<T>;

const enc = encodeURIComponent;

export function clusterMethods(
  call: Call,
  callAsync: (method: string, path: string, json?: unknown) => Promise<Operation>,
): ClusterClient {
  return {
    clusterInfo: () => call('GET', '/1.0/cluster'),
    bootstrapCluster: (request) => call('POST', '/1.0/cluster/bootstrap', request),
    createJoinToken: (name, o) =>
      call('POST', '/1.0/cluster/tokens', { name, ...(o?.expiry !== undefined && { expiry: o.expiry }) }),
    joinCluster: (token, address) => call('POST', '/1.0/cluster/join', { token, address }),
    listMembers: () => call('GET', '/1.0/cluster/members'),
    getMember: (name) => call('GET', `/1.0/cluster/members/${enc(name)}`),
    async removeMember(name, o) {
      await call('DELETE', `/1.0/cluster/members/${enc(name)}${o?.force ? '?force=true' : ''}`);
    },
    changeMemberState: (name, request) =>
      callAsync('POST', `/1.0/cluster/members/${enc(name)}/state`, request),
    clusterConfig: async () =>
      (await call<{ config: Record<string, string> }>('GET', '/1.0/cluster/config')).config,
    updateClusterConfig: async (config) =>
      (await call<{ config: Record<string, string> }>('PATCH', '/1.0/cluster/config', { config })).config,
    clusterMoves: () => call('GET', '/1.0/cluster/moves'),
    rebalanceCluster: (o) => call('POST', '/1.0/cluster/rebalance', { dryRun: o?.dryRun === true }),
  };
}
