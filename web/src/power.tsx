import { useSignal } from '@preact/signals';
import type { ClusterMemberInfo } from '../../src/client/cluster-client.ts';
import {
  MEMBER_POWER_FIELDS,
  memberPowerKey,
  memberPowerPatch,
  POWER_DRIVERS,
  type PowerDriver,
} from './cluster-keys.ts';
import { api } from './state.ts';
import { Field, Form, when } from './ui.tsx';

/*
 * Power management on the Members page (decision 0055): how each member is powered on and off
 * (`member.NAME.power.*`, through the same PATCH /1.0/cluster/config as `trivisor cluster set`),
 * and each member's power state as GET /1.0/cluster/members answers it.
 */

const DRIVER_NAMES: Record<PowerDriver, string> = {
  ipmi: 'IPMI (the BMC powers it on and off)',
  wol: 'Wake-on-LAN (on), a command (off)',
  command: 'Commands of your own',
};

const STATE_NAMES: Record<NonNullable<ClusterMemberInfo['power']>['state'], string> = {
  on: 'on',
  evacuating: 'emptying to power off',
  'powering-off': 'powering off',
  off: 'off',
  'powering-on': 'powering on',
};

/** A member's power state and the power manager's reason, for its row; nothing while it was never touched. */
export function MemberPowerState(props: { power: ClusterMemberInfo['power'] }) {
  const p = props.power;
  if (!p) return null;
  return (
    <div data-testid="member-power">
      <strong>Power: {STATE_NAMES[p.state]}</strong> <span class="muted">since {when(p.since)}</span>:{' '}
      {p.reason}
      {p.error && <span role="alert"> {p.error}</span>}
    </div>
  );
}

/** The per-member power settings: a member chosen, its driver and that driver's fields. */
export function MemberPowerSettings(props: {
  admin: boolean;
  members: ClusterMemberInfo[];
  config: Record<string, string>;
  saved: () => void;
}) {
  const chosen = useSignal(props.members[0]?.name ?? '');
  const member = props.members.some((m) => m.name === chosen.value)
    ? chosen.value
    : (props.members[0]?.name ?? '');
  const prefix = memberPowerKey(member, '');
  const own = Object.fromEntries(Object.entries(props.config).filter(([k]) => k.startsWith(prefix)));
  return (
    <section class="panel" aria-labelledby="member-power">
      <h2 id="member-power">Power of each member</h2>
      <p class="muted">
        How power management switches a member off and on again. A member without a driver is never powered
        off. The BMC's password is never entered here: name a file on every member that holds it.
      </p>
      <Field label="Member" id="f-power-member">
        {(id) => (
          <select
            id={id}
            value={member}
            onChange={(e) => {
              chosen.value = e.currentTarget.value;
            }}
          >
            {props.members.map((m) => (
              <option key={m.name} value={m.name}>
                {m.name}
              </option>
            ))}
          </select>
        )}
      </Field>
      {member !== '' &&
        (props.admin ? (
          // Keyed by the member and what is set: after a save the fields show the keys as the API has them.
          <MemberPowerForm
            key={`${member} ${JSON.stringify(own)}`}
            member={member}
            own={own}
            saved={props.saved}
          />
        ) : (
          <dl class="facts" data-testid="member-power-keys">
            {Object.keys(own).length === 0 ? (
              <dd>No power driver: {member} is never powered off.</dd>
            ) : (
              Object.entries(own).map(([k, v]) => [<dt key={`${k}-t`}>{k}</dt>, <dd key={k}>{v}</dd>])
            )}
          </dl>
        ))}
    </section>
  );
}

function MemberPowerForm(props: { member: string; own: Record<string, string>; saved: () => void }) {
  const { member, own } = props;
  const set = own[memberPowerKey(member, 'driver')];
  const driver = useSignal<PowerDriver | ''>(
    (POWER_DRIVERS as readonly string[]).includes(set ?? '') ? (set as PowerDriver) : '',
  );
  const fields = MEMBER_POWER_FIELDS.filter(
    (f) => f.field !== 'driver' && driver.value !== '' && f.drivers.includes(driver.value),
  );
  return (
    <Form
      label={`Power settings of ${member}`}
      submit="Save power settings"
      done={`Power settings of ${member} saved`}
      run={async (d) => {
        const entered = Object.fromEntries(fields.map((f) => [f.field, String(d.get(f.field) ?? '')]));
        const patch = memberPowerPatch(member, own, driver.value, entered);
        if (!patch) return;
        await api.updateClusterConfig(patch);
        props.saved();
      }}
    >
      <Field
        label="Driver"
        id="f-power-driver"
        hint={`${memberPowerKey(member, 'driver')}: ipmi, wol or command`}
      >
        {(id) => (
          <select
            id={id}
            name="driver"
            value={driver.value}
            onChange={(e) => {
              driver.value = e.currentTarget.value as PowerDriver | '';
            }}
          >
            <option value="">None: never powered off</option>
            {POWER_DRIVERS.map((d) => (
              <option key={d} value={d}>
                {DRIVER_NAMES[d]}
              </option>
            ))}
          </select>
        )}
      </Field>
      <div class="row">
        {fields.map((f) => (
          <Field
            key={f.field}
            id={`f-power-${f.field.replace(/[._]/g, '-')}`}
            label={f.requiredFor?.includes(driver.value as PowerDriver) ? f.label : `${f.label} (optional)`}
            hint={`${memberPowerKey(member, f.field)}: ${f.hint}`}
          >
            {(id) => (
              <input
                id={id}
                name={f.field}
                maxLength={100}
                defaultValue={own[memberPowerKey(member, f.field)] ?? ''}
                autocomplete="off"
              />
            )}
          </Field>
        ))}
      </div>
    </Form>
  );
}
