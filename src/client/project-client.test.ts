import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';
import { projectFor } from '../cli/context.ts';
import { inProject } from './transport.ts';

describe('the project a client acts in', () => {
  test('every project-owned path gets ?project= (or &project=); default, /1.0 and the project routes do not', () => {
    assert.equal(inProject('/1.0/guests?recursion=1', 'p1'), '/1.0/guests?recursion=1&project=p1');
    assert.equal(inProject('/1.0/guests/web/exec', 'p1'), '/1.0/guests/web/exec?project=p1');
    assert.equal(
      inProject('/1.0/operations/x/websocket?secret=s', 'p1'),
      '/1.0/operations/x/websocket?secret=s&project=p1',
    );
    assert.equal(inProject('/1.0/guests', 'default'), '/1.0/guests');
    assert.equal(inProject('/1.0/guests', undefined), '/1.0/guests');
    assert.equal(inProject('/1.0', 'p1'), '/1.0');
    assert.equal(inProject('/1.0/projects/p1', 'p1'), '/1.0/projects/p1');
    assert.equal(inProject('/1.0/projects?recursion=1', 'p1'), '/1.0/projects?recursion=1');
  });

  describe('projectFor', () => {
    const saved = process.env.TRIVISOR_PROJECT;
    afterEach(() => {
      if (saved === undefined) delete process.env.TRIVISOR_PROJECT;
      else process.env.TRIVISOR_PROJECT = saved;
    });

    test('--project wins over TRIVISOR_PROJECT, which wins over the remote default, then default', () => {
      delete process.env.TRIVISOR_PROJECT;
      assert.equal(projectFor({}), 'default');
      assert.equal(projectFor({}, 'team'), 'team');
      process.env.TRIVISOR_PROJECT = 'env';
      assert.equal(projectFor({}, 'team'), 'env');
      assert.equal(projectFor({ project: 'flag' }, 'team'), 'flag');
    });

    test('a malformed project name is one clear line before any request', () => {
      assert.throws(
        () => projectFor({ project: 'Bad Name' }),
        /The project name "Bad Name" is not a DNS label/,
      );
    });
  });
});
