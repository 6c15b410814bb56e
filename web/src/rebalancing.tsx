import { useSignal } from '@preact/signals';
import type { ClusterMemberInfo, ClusterMove, RebalanceResult } from '../../src/client/cluster-client.ts';
import { type ClusterKey, POWER_KEYS, REBALANCE_KEYS, settingsPatch } from './cluster-keys.ts';
import { MemberPowerSettings } from './power.tsx';
import { api } from './state.ts';
import { Action, Field, Form, Loading, useLoad, when } from './ui.tsx';

/*
 * The rebalancer on the Members page (decision 0053): its moves, each with the explanation the
 * API records (imbalance before and after, both members' loads, benefit against cost, the
 * constraints that narrowed the choice); a dry-run plan (with power management's power-ons and
 * power-offs, decision 0055); a cycle now; its cluster-wide keys and power management's.
 * Moves publish a `cluster-move` event on the guest's member, but a cycle's answer already holds
 * them: the list is read again after a cycle and on Refresh, not on every event.
 */

type PlannedMove = RebalanceResult['planned'][number];

const percent = (v: number) => `${Math.round(v * 100)}%`;
const fixed = (v: number, digits: number) => v.toFixed(digits);

/** One move, planned or made: its summary line and, folded, the figures behind it. */
function MoveItem(props: { move: PlannedMove | ClusterMove }) {
  const m = props.move;
  const made = 'result' in m ? m : undefined;
  return (
    <li data-move={m.guest} class="move">
      <div>
        <strong>{m.guest}</strong> ({m.model}) {m.from} → {m.to}, {m.how}, for {m.reason}
        {made && (
          <>
            {' · '}
            {made.result === 'moved' ? (
              <span class="status Running">moved</span>
            ) : (
              <span class="status Error">failed</span>
            )}{' '}
            <span class="muted">{when(made.finishedAt)}</span>
          </>
        )}
      </div>
      {made?.error && <p role="alert">{made.error}</p>}
      <details>
        <summary>Why</summary>
        <dl class="facts">
          <dt>Imbalance</dt>
          <dd data-testid="move-imbalance">
            {fixed(m.imbalanceBefore, 3)} → {fixed(m.imbalanceAfter, 3)}
          </dd>
          <dt>Load of {m.from}</dt>
          <dd>
            {percent(m.loadBefore.from)} → {percent(m.loadAfter.from)}
          </dd>
          <dt>Load of {m.to}</dt>
          <dd>
            {percent(m.loadBefore.to)} → {percent(m.loadAfter.to)}
          </dd>
          <dt>Benefit</dt>
          <dd data-testid="move-benefit">{fixed(m.benefitSeconds, 1)} s</dd>
          <dt>Cost</dt>
          <dd data-testid="move-cost">
            {fixed(m.costSeconds, 2)} s (copy {fixed(m.copySeconds, 2)} s, downtime {Math.round(m.downtimeMs)}{' '}
            ms)
          </dd>
          <dt>Constraints</dt>
          <dd data-testid="move-constraints">{m.constraints.length ? m.constraints.join('; ') : 'none'}</dd>
          <dt>Planned</dt>
          <dd>{when(new Date(m.atMs).toISOString())}</dd>
        </dl>
        <p class="muted">{m.summary}</p>
      </details>
    </li>
  );
}

/** What a dry run or a cycle answered: the imbalance, the moves planned or made, and what was held back. */
function CycleResult(props: { result: RebalanceResult }) {
  const r = props.result;
  const made = r.moved.filter((m) => m.result === 'moved').length;
  const shown: Array<PlannedMove | ClusterMove> = r.dryRun ? r.planned : r.moved;
  return (
    <div role="status" data-testid="rebalance-result" class="panel">
      <p>
        {r.dryRun ? 'Plan (dry run, nothing moved)' : 'Cycle run'}: imbalance {fixed(r.imbalanceBefore, 3)} →{' '}
        {fixed(r.imbalanceAfter, 3)} as planned; {r.planned.length} move{r.planned.length === 1 ? '' : 's'}{' '}
        planned{r.dryRun ? '' : `, ${made} made`}.
      </p>
      {shown.length > 0 && (
        <ul class="moves" aria-label={r.dryRun ? 'Planned moves' : 'Moves made'}>
          {shown.map((m) => (
            <MoveItem key={`${m.guest}-${m.atMs}`} move={m} />
          ))}
        </ul>
      )}
      {r.power && r.power.powerOn.length + r.power.powerOff.length > 0 && (
        // As the CLI's dry run prints them: one line a member, with the power manager's reason.
        <ul aria-label="Power changes" data-testid="rebalance-power">
          {r.power.powerOn.map((o) => (
            <li key={`on-${o.member}`}>
              Power on {o.member}: {o.reason}
            </li>
          ))}
          {r.power.powerOff.map((o) => (
            <li key={`off-${o.member}`}>
              Power off {o.member}: {o.reason}
              {o.moves.length > 0 &&
                ` (${o.moves.length} guest${o.moves.length === 1 ? '' : 's'} to move first: ${o.moves.map((m) => `${m.guest} → ${m.to}`).join(', ')})`}
            </li>
          ))}
        </ul>
      )}
      {r.notes.length > 0 && (
        <ul aria-label="Held back" data-testid="rebalance-notes">
          {r.notes.map((n) => (
            <li key={n}>{n}</li>
          ))}
        </ul>
      )}
    </div>
  );
}

export function Rebalancing(props: { admin: boolean; members: ClusterMemberInfo[] }) {
  const settings = useLoad(() => api.clusterConfig(), []);
  const moves = useLoad(() => api.clusterMoves(), []);
  const result = useSignal<RebalanceResult | null>(null);
  const config = settings.data ?? {};
  const keyValue = (key: string) =>
    config[key] ?? [...REBALANCE_KEYS, ...POWER_KEYS].find((k) => k.key === key)?.defaultValue;
  const online = props.members.filter((m) => m.status === 'Online').length;

  const cycle = async (dryRun: boolean) => {
    try {
      result.value = await api.rebalanceCluster({ dryRun });
    } finally {
      if (!dryRun) moves.reload();
    }
  };

  return (
    <>
      <section class="panel" aria-labelledby="rebalancing">
        <h2 id="rebalancing">Rebalancing</h2>
        {settings.data && (
          <p data-testid="rebalance-status">
            {keyValue('cluster.rebalance.enabled') === 'true'
              ? `The rebalancer runs by itself every ${keyValue('cluster.rebalance.interval')}`
              : 'The rebalancer runs only when asked'}
            , balancing the members' measured demand over the last {keyValue('cluster.rebalance.window')} (
            {keyValue('cluster.rebalance.percentile')}th percentile) towards an imbalance below{' '}
            {keyValue('cluster.rebalance.threshold')}%.{' '}
            {online < 2 && <span class="muted">It needs two Online members.</span>}
          </p>
        )}
        {props.admin && (
          <div class="row">
            <Action label="Plan a rebalance (dry run)" run={() => cycle(true)}>
              Plan (dry run)
            </Action>
            <Action
              kind="primary"
              confirm="Run a rebalancing cycle now? The planned moves are made one at a time (a vm live, a ct or pvm stopped and started again within its downtime budget)."
              run={() => cycle(false)}
            >
              Rebalance now
            </Action>
          </div>
        )}
        {result.value && <CycleResult result={result.value} />}
        <h3>Moves</h3>
        {moves.data === undefined ? (
          <Loading error={moves.error} />
        ) : moves.data.length === 0 ? (
          <p class="muted" data-testid="no-moves">
            The rebalancer has moved no guest yet.
          </p>
        ) : (
          <ul class="moves" aria-label="Rebalancing moves">
            {moves.data.map((m) => (
              <MoveItem key={`${m.guest}-${m.atMs}`} move={m} />
            ))}
          </ul>
        )}
      </section>
      <section class="panel" aria-labelledby="rebalance-settings">
        <h2 id="rebalance-settings">Rebalancer and power settings</h2>
        {settings.data && (
          <p data-testid="power-status">
            {keyValue('cluster.power.enabled') === 'true'
              ? `Power management is on: a member whose load stays below ${keyValue('cluster.power.low_load')}% for ${keyValue('cluster.power.low_window')} is emptied and powered off (at most ${keyValue('cluster.power.max_cycles')} times a day), and members are powered on again when demand rises over ${keyValue('cluster.power.high_window')}. Only members with a power driver take part.`
              : 'Power management is off: no member is ever powered off.'}
          </p>
        )}
        {settings.data === undefined ? (
          <Loading error={settings.error} />
        ) : props.admin ? (
          // Keyed by what is set: after a save the fields show the keys as the API now has them.
          <div key={JSON.stringify(config)}>
            <Form
              label="Rebalancer settings"
              submit="Save settings"
              run={async (d) => {
                const entered = Object.fromEntries(
                  [...REBALANCE_KEYS, ...POWER_KEYS].map((k) => [k.key, String(d.get(k.key) ?? '')]),
                );
                const patch = settingsPatch(config, entered);
                if (!patch) return;
                await api.updateClusterConfig(patch);
                settings.reload();
              }}
              done="Rebalancer settings saved"
            >
              <p class="muted">An empty field takes its default (shown in grey).</p>
              <KeyFields keys={REBALANCE_KEYS} config={config} />
              <h3>Power management</h3>
              <KeyFields keys={POWER_KEYS} config={config} />
            </Form>
          </div>
        ) : (
          <dl class="facts">
            {[...REBALANCE_KEYS, ...POWER_KEYS].map((k) => [
              <dt key={`${k.key}-t`}>{k.key}</dt>,
              <dd key={k.key}>{keyValue(k.key)}</dd>,
            ])}
          </dl>
        )}
      </section>
      {settings.data && (
        <MemberPowerSettings
          admin={props.admin}
          members={props.members}
          config={config}
          saved={() => settings.reload()}
        />
      )}
    </>
  );
}

/** A field a key: empty means unset, its default the placeholder. */
function KeyFields(props: { keys: readonly ClusterKey[]; config: Record<string, string> }) {
  return (
    <div class="row">
      {props.keys.map((k) => (
        <Field key={k.key} label={k.label} hint={`${k.key}: ${k.hint}`}>
          {(id) => (
            <input
              id={id}
              name={k.key}
              maxLength={100}
              defaultValue={props.config[k.key] ?? ''}
              placeholder={k.defaultValue}
            />
          )}
        </Field>
      ))}
    </div>
  );
}
