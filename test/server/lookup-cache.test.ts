import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkpointSize, LookupCache } from '../../src/server/lookup-cache.js';

test('lookup cache: hits only for the current head size, least recently used evicted first', () => {
  const c = new LookupCache(2);
  c.set('a', 5, 'A5');
  c.set('b', 5, 'B5');
  assert.equal(c.get('a', 5), 'A5');
  c.set('c', 5, 'C5'); // evicts b, the least recently used
  assert.equal(c.get('b', 5), undefined);
  assert.equal(c.get('a', 5), 'A5');
  assert.equal(c.get('c', 6), undefined, 'an answer for another size is never served');
  assert.equal(c.get('c', 5), undefined, 'and it is dropped');
  assert.equal(c.size, 1);
  const off = new LookupCache(0);
  off.set('a', 1, 'x');
  assert.equal(off.get('a', 1), undefined);
});

test('checkpointSize reads the second line of a note', () => {
  assert.equal(checkpointSize('example.com/log\n1234\nAAAA\n\n— sig\n'), 1234);
});
