import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  type ActionClass,
  ALL_PROJECTS,
  type Caller,
  decideAccess,
  type Role,
  UNIX_CALLER,
} from './access.ts';

const caller = (role: Role, projects: string[]): Caller => ({
  method: 'token',
  name: `t-${role}`,
  role,
  projects,
});

/** Every class against every role, bound to p1 (and asking in p1), or to every project. */
const EXPECTED: Record<ActionClass, { p1: Role[]; all: Role[] }> = {
  public: { p1: ['viewer', 'operator', 'admin'], all: ['viewer', 'operator', 'admin'] },
  authenticated: { p1: ['viewer', 'operator', 'admin'], all: ['viewer', 'operator', 'admin'] },
  read: { p1: ['viewer', 'operator', 'admin'], all: ['viewer', 'operator', 'admin'] },
  operate: { p1: ['operator', 'admin'], all: ['operator', 'admin'] },
  admin: { p1: ['admin'], all: ['admin'] },
  'host-read': { p1: [], all: ['viewer', 'operator', 'admin'] },
  'host-admin': { p1: [], all: ['admin'] },
};

describe('decideAccess', () => {
  for (const [access, expected] of Object.entries(EXPECTED) as Array<
    [ActionClass, { p1: Role[]; all: Role[] }]
  >) {
    for (const role of ['viewer', 'operator', 'admin'] as Role[]) {
      test(`${access}: ${role} in p1 ${expected.p1.includes(role) ? 'may' : 'may not'}, bound to * ${expected.all.includes(role) ? 'may' : 'may not'}`, () => {
        const inP1 = decideAccess(caller(role, ['p1']), access, { project: 'p1', what: 'X /r' });
        assert.equal(inP1.allowed, expected.p1.includes(role), JSON.stringify(inP1));
        const everywhere = decideAccess(caller(role, [ALL_PROJECTS]), access, {
          project: 'p1',
          what: 'X /r',
        });
        assert.equal(everywhere.allowed, expected.all.includes(role), JSON.stringify(everywhere));
      });
    }
  }

  test('a role in one project is nothing in another, nor over every project at once', () => {
    const op = caller('operator', ['p1', 'p2']);
    assert.equal(decideAccess(op, 'read', { project: 'p2', what: 'GET /1.0/guests' }).allowed, true);
    const other = decideAccess(op, 'read', { project: 'p3', what: 'GET /1.0/guests' });
    assert.deepEqual(other, {
      allowed: false,
      message:
        'Permission denied: token t-operator is an operator in projects p1, p2; GET /1.0/guests needs a viewer in project p3',
    });
    const all = decideAccess(op, 'read', { project: ALL_PROJECTS, what: 'GET /1.0/guests' });
    assert.equal(all.allowed, false);
  });

  test('refusals are one line that says who, what it holds and what the request needs', () => {
    const viewer = decideAccess(caller('viewer', ['p1']), 'operate', {
      project: 'p1',
      what: 'POST /1.0/guests',
    });
    assert.deepEqual(viewer, {
      allowed: false,
      message:
        'Permission denied: token t-viewer is a viewer in project p1; POST /1.0/guests needs an operator in project p1',
    });
    const op = decideAccess(caller('operator', ['p1']), 'host-admin', {
      project: ALL_PROJECTS,
      what: 'PATCH /1.0/projects/:name',
    });
    assert.equal(
      op.allowed === false && op.message,
      'Permission denied: token t-operator is an operator in project p1; PATCH /1.0/projects/:name needs an admin bound to all projects (*)',
    );
  });

  test('root on the unix socket may do everything', () => {
    for (const access of Object.keys(EXPECTED) as ActionClass[]) {
      assert.equal(decideAccess(UNIX_CALLER, access, { project: 'any', what: 'X /r' }).allowed, true, access);
    }
  });
});
