import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { type GrowthRow, growthRatios, parseProcIo, ratiosOver } from '../../bench/growth-figures.js';

const PROC_IO = `rchar: 6976
wchar: 120
syscr: 10
syscw: 2
read_bytes: 4096
write_bytes: 536870912
cancelled_write_bytes: 8192
`;

function row(cpuPerEntry: number, cpuPerOp: number): GrowthRow {
  return { cpu_us_per_entry: cpuPerEntry, cpu_us_per_op: cpuPerOp } as GrowthRow;
}

describe('growth bench figures', () => {
  test('reads the storage bytes of /proc/<pid>/io, not the cancelled ones or the syscall counts', () => {
    assert.deepEqual(parseProcIo(PROC_IO), { readBytes: 4096, writeBytes: 536870912 });
  });

  test('a /proc/<pid>/io without write_bytes gives nothing rather than zero', () => {
    assert.equal(parseProcIo('rchar: 1\nread_bytes: 0\ncancelled_write_bytes: 5\n'), undefined);
  });

  test('ratios are the larger size over the smaller one', () => {
    assert.deepEqual(growthRatios(row(30, 20), row(39, 50)), { cpu_us_per_entry: 1.3, cpu_us_per_op: 2.5 });
  });

  test('the check passes at the limit and names each figure above it', () => {
    assert.deepEqual(ratiosOver({ cpu_us_per_entry: 1.3, cpu_us_per_op: 1.3 }, 1.3), []);
    assert.deepEqual(ratiosOver({ cpu_us_per_entry: 1.31, cpu_us_per_op: 0.9 }, 1.3), [
      'cpu_us_per_entry grew 1.31x, above the 1.3x limit',
    ]);
  });

  test('a ratio that could not be computed fails the check', () => {
    const ratios = growthRatios(row(0, 20), row(10, 20));
    assert.deepEqual(ratiosOver(ratios, 1.3), ['cpu_us_per_entry could not be compared (Infinity)']);
    assert.equal(ratiosOver({ cpu_us_per_entry: Number.NaN, cpu_us_per_op: 1 }, 1.3).length, 1);
  });
});
