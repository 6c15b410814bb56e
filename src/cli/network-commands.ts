import { type Command, Option } from 'commander';
import type { CreateNetworkBody, NetworkAclRule } from '../api/types.ts';
import { invalidArgument } from '../core/errors.ts';
import { clientOf, parsePairs } from './context.ts';
import { networkInfo, networkTable, type OutputFormat, renderData, renderTable } from './output.ts';

/** `network create|list|info|set|unset|delete`. */
export function addNetworkCommands(program: Command): void {
  const network = program.command('network').description('Manage networks (bridges with DHCP/DNS and NAT)');

  network
    .command('create')
    .description(
      'Create a network: network create NAME ipv4.address=198.18.10.1/24 [ipv4.nat=true] [dns.domain=…]',
    )
    .argument('<name>')
    .argument('[pairs...]', 'config keys as key=value')
    .option('--isolated', 'guests reach the gateway but not each other (security.isolated=true)')
    .option('--description <text>')
    .action(
      async (
        name: string,
        pairs: string[],
        opts: { isolated?: boolean; description?: string },
        cmd: Command,
      ) => {
        const config = parsePairs(pairs, 'Config');
        if (opts.isolated) config['security.isolated'] = 'true';
        const request: CreateNetworkBody = { name, config };
        if (opts.description !== undefined) request.description = opts.description;
        await clientOf(cmd).createNetwork(request);
        process.stdout.write(`Network ${name} created\n`);
      },
    );

  network
    .command('list')
    .alias('ls')
    .description('List networks')
    .addOption(
      new Option('-f, --format <format>', 'output format')
        .choices(['table', 'json', 'yaml'])
        .default('table'),
    )
    .action(async (opts: { format: OutputFormat }, cmd: Command) => {
      const list = await clientOf(cmd).listNetworks();
      process.stdout.write(opts.format === 'table' ? networkTable(list) : renderData(list, opts.format));
    });

  network
    .command('info')
    .alias('show')
    .description('Show a network')
    .argument('<name>')
    .addOption(new Option('-f, --format <format>', 'json or yaml instead of text').choices(['json', 'yaml']))
    .action(async (name: string, opts: { format?: 'json' | 'yaml' }, cmd: Command) => {
      const n = await clientOf(cmd).getNetwork(name);
      process.stdout.write(opts.format ? renderData(n, opts.format) : networkInfo(n));
    });

  network
    .command('set')
    .description('Set network config keys: network set NAME key=value...')
    .argument('<name>')
    .argument('<pairs...>')
    .option('--isolated', 'shorthand for security.isolated=true')
    .action(async (name: string, pairs: string[], opts: { isolated?: boolean }, cmd: Command) => {
      const set = parsePairs(pairs, 'Config');
      if (opts.isolated) set['security.isolated'] = 'true';
      if (Object.keys(set).length === 0) throw invalidArgument('Nothing to set: give key=value pairs');
      await clientOf(cmd).updateNetwork(name, { set });
    });

  network
    .command('unset')
    .description('Remove network config keys (back to their defaults)')
    .argument('<name>')
    .argument('<keys...>')
    .action(async (name: string, keys: string[], _opts: unknown, cmd: Command) => {
      await clientOf(cmd).updateNetwork(name, { unset: keys });
    });

  network
    .command('delete')
    .alias('rm')
    .description('Delete networks (refused while a guest has a NIC on them)')
    .argument('<names...>')
    .action(async (names: string[], _opts: unknown, cmd: Command) => {
      for (const name of names) await clientOf(cmd).deleteNetwork(name);
    });

  network
    .command('attach')
    .description('Give a guest a NIC on a network (hot-plugged into a running guest)')
    .argument('<network>')
    .argument('<guest>')
    .argument('[nic]', 'device name (default: the first free ethN)')
    .option('--ipv4-address <address>', 'static address')
    .option('--limits-ingress <rate>', 'bandwidth to the guest, e.g. 10Mbit')
    .option('--limits-egress <rate>', 'bandwidth from the guest, e.g. 10Mbit')
    .action(
      async (
        net: string,
        guest: string,
        nic: string | undefined,
        opts: { ipv4Address?: string; limitsIngress?: string; limitsEgress?: string },
        cmd: Command,
      ) => {
        const r = await clientOf(cmd).attachNetwork(net, {
          guest,
          ...(nic !== undefined && { nic }),
          ...(opts.ipv4Address !== undefined && { 'ipv4.address': opts.ipv4Address }),
          ...(opts.limitsIngress !== undefined && { 'limits.ingress': opts.limitsIngress }),
          ...(opts.limitsEgress !== undefined && { 'limits.egress': opts.limitsEgress }),
        });
        process.stdout.write(`${r.message}\n`);
      },
    );

  network
    .command('detach')
    .description("Remove a guest's NIC on a network (hot-unplugged from a running guest)")
    .argument('<network>')
    .argument('<guest>')
    .argument('[nic]')
    .action(async (net: string, guest: string, nic: string | undefined, _opts: unknown, cmd: Command) => {
      const r = await clientOf(cmd).detachNetwork(net, { guest, ...(nic !== undefined && { nic }) });
      process.stdout.write(`${r.message}\n`);
    });

  const forward = network
    .command('forward')
    .description('Port forwards (DNAT) from host addresses to guests');
  const protocolOption = () =>
    new Option('--protocol <protocol>', 'tcp or udp').choices(['tcp', 'udp']).default('tcp');

  forward
    .command('add')
    .description('Forward LISTEN_ADDR:PORT on the host to GUEST:PORT (guest name or address)')
    .argument('<network>')
    .argument('<listen>', 'LISTEN_ADDR:PORT')
    .argument('<target>', 'GUEST:PORT')
    .addOption(protocolOption())
    .action(
      async (
        net: string,
        listen: string,
        target: string,
        opts: { protocol: 'tcp' | 'udp' },
        cmd: Command,
      ) => {
        const [listenAddress, listenPort] = splitPort(listen, 'LISTEN_ADDR:PORT');
        const [to, targetPort] = splitPort(target, 'GUEST:PORT');
        await clientOf(cmd).addNetworkForward(net, {
          listenAddress,
          listenPort,
          target: to,
          targetPort,
          protocol: opts.protocol,
        });
      },
    );

  forward
    .command('list')
    .alias('ls')
    .description("List a network's port forwards")
    .argument('<network>')
    .action(async (net: string, _opts: unknown, cmd: Command) => {
      const n = await clientOf(cmd).getNetwork(net);
      process.stdout.write(
        renderTable(
          ['PROTOCOL', 'LISTEN', 'TARGET', 'GUEST'],
          (n.forwards ?? []).map((f) => [
            f.protocol,
            `${f.listenAddress}:${f.listenPort}`,
            `${f.targetAddress}:${f.targetPort}`,
            f.targetGuest ?? '-',
          ]),
        ),
      );
    });

  forward
    .command('remove')
    .alias('rm')
    .description('Remove a port forward')
    .argument('<network>')
    .argument('<listen>', 'LISTEN_ADDR:PORT')
    .addOption(protocolOption())
    .action(async (net: string, listen: string, opts: { protocol: 'tcp' | 'udp' }, cmd: Command) => {
      const [listenAddress, listenPort] = splitPort(listen, 'LISTEN_ADDR:PORT');
      await clientOf(cmd).removeNetworkForward(net, { listenAddress, listenPort, protocol: opts.protocol });
    });

  const acl = network
    .command('acl')
    .description("A network's ACL rules (stateless; first match decides; the rest is allowed)");

  acl
    .command('add')
    .description(
      'Append a rule: network acl add NET ingress|egress allow|drop [source=CIDR] [destination=CIDR] [protocol=tcp|udp|icmp] [destination_port=N]',
    )
    .argument('<network>')
    .argument('<direction>', 'ingress (to guests) or egress (from guests)')
    .argument('<action>', 'allow or drop')
    .argument('[pairs...]', 'match fields as key=value')
    .action(
      async (net: string, direction: string, action: string, pairs: string[], _o: unknown, cmd: Command) => {
        const fields = parsePairs(pairs, 'Rule');
        const rule: NetworkAclRule = {
          direction: direction as NetworkAclRule['direction'],
          action: action as NetworkAclRule['action'],
        };
        for (const [key, value] of Object.entries(fields)) {
          if (key === 'source' || key === 'destination') rule[key] = value;
          else if (key === 'protocol') rule.protocol = value as 'tcp' | 'udp' | 'icmp';
          else if (key === 'destination_port') rule.destinationPort = Number(value);
          else
            throw invalidArgument(
              `Unknown rule field ${key}: use source, destination, protocol, destination_port`,
            );
        }
        await clientOf(cmd).addNetworkAcl(net, rule);
      },
    );

  acl
    .command('list')
    .alias('ls')
    .description("List a network's ACL rules with their indexes")
    .argument('<network>')
    .action(async (net: string, _opts: unknown, cmd: Command) => {
      const n = await clientOf(cmd).getNetwork(net);
      process.stdout.write(
        renderTable(
          ['INDEX', 'DIRECTION', 'ACTION', 'SOURCE', 'DESTINATION', 'PROTOCOL', 'PORT'],
          (n.acls ?? []).map((r, i) => [
            String(i),
            r.direction,
            r.action,
            r.source ?? '-',
            r.destination ?? '-',
            r.protocol ?? '-',
            r.destinationPort === undefined ? '-' : String(r.destinationPort),
          ]),
        ),
      );
    });

  acl
    .command('remove')
    .alias('rm')
    .description('Remove the rule with this index (see acl list)')
    .argument('<network>')
    .argument('<index>')
    .action(async (net: string, index: string, _opts: unknown, cmd: Command) => {
      if (!/^\d+$/.test(index)) throw invalidArgument(`${JSON.stringify(index)} is not a rule index`);
      await clientOf(cmd).removeNetworkAcl(net, Number(index));
    });
}

/** `HOST:PORT` → [host, port]; InvalidArgument otherwise. */
function splitPort(text: string, what: string): [string, number] {
  const i = text.lastIndexOf(':');
  const port = Number(text.slice(i + 1));
  if (i <= 0 || !Number.isInteger(port) || port < 1 || port > 65535) {
    throw invalidArgument(`${JSON.stringify(text)} is not ${what}`);
  }
  return [text.slice(0, i), port];
}
