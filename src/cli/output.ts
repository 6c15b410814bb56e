import { stringify } from 'yaml';
import type { Guest, ImageRecord, Network, Operation } from '../api/types.ts';
import { formatMode, INJECTED_FILE_PREFIX, parseInjectedFile } from '../core/guest-files.ts';
import { formatBytes } from '../core/sizes.ts';

/** Output formats for people (table) and scripts (json, yaml). */
export type OutputFormat = 'table' | 'json' | 'yaml';

/** Renders rows as left-aligned columns with a header line. */
export function renderTable(headers: string[], rows: string[][]): string {
  const widths = headers.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? '').length)));
  const line = (cells: string[]) =>
    cells
      .map((c, i) => (i === cells.length - 1 ? c : c.padEnd(widths[i] ?? 0)))
      .join('  ')
      .trimEnd();
  return `${[line(headers), ...rows.map(line)].join('\n')}\n`;
}

/** JSON or YAML of API objects, exactly as the API returns them. */
export function renderData(data: unknown, format: 'json' | 'yaml'): string {
  return format === 'json' ? `${JSON.stringify(data, null, 2)}\n` : stringify(data);
}

/** `3725` → `1h 2m 5s`. */
export function formatDuration(seconds: number): string {
  let s = Math.floor(seconds);
  const parts: string[] = [];
  for (const [unit, size] of [
    ['d', 86_400],
    ['h', 3_600],
    ['m', 60],
  ] as const) {
    if (s >= size) {
      parts.push(`${Math.floor(s / size)}${unit}`);
      s %= size;
    }
  }
  if (s > 0 || parts.length === 0) parts.push(`${s}s`);
  return parts.join(' ');
}

const dash = (v: string | number | null | undefined) => (v === null || v === undefined ? '-' : String(v));

export function guestTable(guests: Guest[], options: { withProject?: boolean } = {}): string {
  // A guest's warnings (a NIC down, decision 0015; a failed scheduled backup, decision 0062) under
  // the table, one line each: a list is where an administrator looks first.
  const warnings = guests.flatMap((g) => (g.state.warnings ?? []).map((w) => `Warning: ${g.name}: ${w}\n`));
  return guestRows(guests, options) + warnings.join('');
}

function guestRows(guests: Guest[], options: { withProject?: boolean }): string {
  const project = options.withProject === true;
  // On a cluster (guests on several members, or placed by its scheduler) each says where it is, as Incus's list does.
  const location =
    new Set(guests.map((g) => g.location)).size > 1 || guests.some((g) => g.placement !== undefined);
  return renderTable(
    [
      ...(project ? ['PROJECT'] : []),
      'NAME',
      'MODEL',
      'STATUS',
      'IMAGE',
      'PID',
      'MEMORY',
      'PROCESSES',
      'IPV4',
      ...(location ? ['LOCATION'] : []),
    ],
    guests.map((g) => [
      ...(project ? [g.project] : []),
      g.name,
      g.model,
      g.status,
      g.imageAlias || g.image.slice(0, 12),
      dash(g.state.pid),
      g.state.usage ? formatBytes(g.state.usage.memoryBytes) : '-',
      dash(g.state.usage?.processes),
      g.state.addresses?.length ? g.state.addresses.join(',') : '-',
      ...(location ? [g.location ?? '-'] : []),
    ]),
  );
}

/** A config value for people: an injected file as its mode, owner and size rather than its base64. */
function configShown(key: string, value: string): string {
  if (!key.startsWith(INJECTED_FILE_PREFIX)) return value;
  try {
    const f = parseInjectedFile(key, value);
    return `${formatMode(f.mode)} ${f.uid}:${f.gid}, ${formatBytes(f.content.length)} (written at every start)`;
  } catch {
    return value;
  }
}

export function guestInfo(g: Guest): string {
  const usage = g.state.usage;
  const lines = [
    `Name: ${g.name}`,
    `Status: ${g.status}`,
    `Model: ${g.model}`,
    `Image: ${g.imageAlias ? `${g.imageAlias} (${g.image.slice(0, 12)})` : g.image.slice(0, 12)}`,
    `Location: ${g.location ?? g.host}`,
    `Created: ${g.createdAt}`,
  ];
  if (g.placement) lines.push(`Placement: ${g.placement}`);
  if (g.error) lines.push(`Error: ${g.error}`);
  for (const w of g.state.warnings ?? []) lines.push(`Warning: ${w}`);
  if (g.state.pid !== null) lines.push(`PID: ${g.state.pid}`);
  if (g.state.uptimeSeconds !== null) lines.push(`Uptime: ${formatDuration(g.state.uptimeSeconds)}`);
  if (usage) {
    const limit = usage.memoryLimitBytes ? ` (limit ${formatBytes(usage.memoryLimitBytes)})` : '';
    lines.push(`Memory: ${formatBytes(usage.memoryBytes)}${limit}`);
    lines.push(`CPU: ${usage.cpuSeconds.toFixed(2)}s`);
    lines.push(`Processes: ${usage.processes}`);
  }
  lines.push(`Restarts: ${g.state.restartCount}`);
  const nics = Object.entries(g.state.nics ?? {});
  if (nics.length > 0) lines.push('Network:');
  for (const [nic, n] of nics) {
    lines.push(`  ${nic}: network ${n.network}, hwaddr ${n.hwaddr}, host ${n.hostName}`);
    const from = n.addressSource === 'lease' ? ' (its DHCP lease: the guest cannot be asked)' : '';
    lines.push(`    addresses: ${n.addresses.join(', ') || '-'}${n.addresses.length > 0 ? from : ''}`);
    if (n.counters) {
      const c = n.counters;
      lines.push(`    received: ${formatBytes(c.rxBytes)} (${c.rxPackets} packets)`);
      lines.push(`    sent: ${formatBytes(c.txBytes)} (${c.txPackets} packets)`);
    }
  }
  const disks = Object.entries(g.disks ?? {});
  if (disks.length > 0) lines.push('Volumes:');
  for (const [device, d] of disks) {
    lines.push(`  ${device}: ${d.pool}/${d.source}${d.path !== undefined ? ` at ${d.path}` : ''}`);
  }
  const keys = Object.keys(g.config).sort();
  lines.push(keys.length === 0 ? 'Config: (none)' : 'Config:');
  for (const k of keys) lines.push(`  ${k}: ${configShown(k, g.config[k] ?? '')}`);
  return `${lines.join('\n')}\n`;
}

export function imageTable(images: ImageRecord[]): string {
  return renderTable(
    ['ALIAS', 'FINGERPRINT', 'DESCRIPTION', 'OS', 'RELEASE', 'SIZE', 'SOURCE', 'CREATED'],
    images.map((i) => [
      i.aliases.join(',') || '-',
      i.fingerprint.slice(0, 12),
      i.description,
      i.os,
      i.release,
      formatBytes(i.sizeBytes),
      i.source,
      i.createdAt.slice(0, 19).replace('T', ' '),
    ]),
  );
}

export function imageInfo(i: ImageRecord): string {
  const lines = [
    `Fingerprint: ${i.fingerprint}`,
    `Aliases: ${i.aliases.join(', ') || '(none)'}`,
    `Description: ${i.description}`,
    `OS: ${i.os} ${i.release}`,
    `Architecture: ${i.architecture}`,
    `Source: ${i.source}`,
    `Size: ${formatBytes(i.sizeBytes)}`,
    `Created: ${i.createdAt}`,
  ];
  const props = Object.keys(i.properties).sort();
  if (props.length > 0) lines.push('Properties:', ...props.map((k) => `  ${k}: ${i.properties[k]}`));
  return `${lines.join('\n')}\n`;
}

export function operationTable(ops: Operation[]): string {
  return renderTable(
    ['ID', 'DESCRIPTION', 'STATUS', 'PROGRESS', 'CREATED'],
    ops.map((o) => [
      o.id,
      o.description,
      o.status,
      o.progress === null ? '-' : `${Math.round(o.progress)}%`,
      o.createdAt.slice(0, 19).replace('T', ' '),
    ]),
  );
}

export function networkTable(networks: Network[]): string {
  return renderTable(
    ['NAME', 'IPV4', 'NAT', 'ISOLATED', 'DOMAIN', 'STATUS', 'USED BY'],
    networks.map((n) => [
      n.name,
      n.config['ipv4.address'] ?? '-',
      n.config['ipv4.nat'] ?? 'false',
      n.config['security.isolated'] ?? 'false',
      n.config['dns.domain'] ?? '-',
      n.status,
      String(n.usedBy.length),
    ]),
  );
}

export function networkInfo(n: Network): string {
  const lines = [`Name: ${n.name}`, `Type: ${n.type}`, `Status: ${n.status}`];
  if (n.description) lines.push(`Description: ${n.description}`);
  if (n.error) lines.push(`Error: ${n.error}`);
  lines.push('Config:');
  for (const k of Object.keys(n.config).sort()) lines.push(`  ${k}: ${n.config[k]}`);
  lines.push(n.usedBy.length === 0 ? 'Used by: (none)' : 'Used by:');
  for (const u of n.usedBy) lines.push(`  ${u}`);
  // On a cluster: the bridge on each member (decision 0034), its own member first.
  // The VXLAN joining them (decision 0050), and each member's end of it.
  if (n.tunnel) {
    const t = n.tunnel;
    lines.push(`Tunnel: ${t.type} id ${t.id}, UDP port ${t.port}, guest MTU ${t.mtu}`);
  }
  if (n.members?.length) lines.push('Members:');
  for (const m of n.members ?? []) {
    const end = m.tunnelEndpoint ? ` (tunnel endpoint ${m.tunnelEndpoint})` : '';
    lines.push(`  ${m.name}: ${m.status}${end}${m.error ? ` (${m.error})` : ''}`);
  }
  if (n.forwards?.length) lines.push('Forwards:');
  for (const f of n.forwards ?? []) {
    const guest = f.targetGuest ? ` (${f.targetGuest})` : '';
    lines.push(
      `  ${f.protocol} ${f.listenAddress}:${f.listenPort} -> ${f.targetAddress}:${f.targetPort}${guest}`,
    );
  }
  if (n.acls?.length) lines.push('ACL rules:');
  (n.acls ?? []).forEach((r, i) => {
    const match = [
      r.source && `source=${r.source}`,
      r.destination && `destination=${r.destination}`,
      r.protocol && `protocol=${r.protocol}`,
      r.destinationPort !== undefined && `destination_port=${r.destinationPort}`,
    ].filter(Boolean);
    lines.push(`  ${i}: ${r.direction} ${r.action} ${match.join(' ')}`.trimEnd());
  });
  return `${lines.join('\n')}\n`;
}
