import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { ROOT } from './helpers/child-process';

const PROCESSES = 4;
const ROUNDS = 3;

/** Starts `PROCESSES` children on `dir`, releases them together, and returns each one's report. */
async function startTogether(dir: string, secret: string): Promise<Record<string, unknown>[]> {
  const children = Array.from({ length: PROCESSES }, () =>
    spawn(process.execPath, ['--import', 'tsx', join(ROOT, 'test', 'helpers', 'open-adapters-child.ts')], {
      cwd: ROOT,
      env: { ...process.env, KEYOPS_DATA_DIR: dir, KEYOPS_KMS_MASTER_SECRET: secret },
      stdio: ['pipe', 'pipe', 'inherit'],
    }),
  );
  const outputs = children.map((child) => {
    let out = '';
    child.stdout.on('data', (d: Buffer) => (out += d.toString()));
    return { child, text: () => out };
  });
  // Every process loaded and ready before any opens a file: the race is in the opening.
  await Promise.all(outputs.map(async ({ child, text }) => {
    while (!text().includes('ready\n')) await once(child.stdout, 'data');
  }));
  for (const { child } of outputs) child.stdin.end('go\n');
  await Promise.all(outputs.filter(({ child }) => child.exitCode === null).map(({ child }) => once(child, 'exit')));
  return outputs.map(({ text }) => JSON.parse(text().split('\n').filter(Boolean).at(-1)!) as Record<string, unknown>);
}

describe('worker processes starting together on a new data directory', () => {
  let base: string;
  before(async () => {
    base = await mkdtemp(join(tmpdir(), 'keyops-start-race-'));
  });
  after(async () => {
    await rm(base, { recursive: true, force: true });
  });

  it(`all ${PROCESSES} start, and find one crypto-unit set whose key storage opens (${ROUNDS} rounds)`, async () => {
    for (let round = 1; round <= ROUNDS; round++) {
      const reports = await startTogether(join(base, `round-${round}`), randomBytes(32).toString('base64'));
      for (const r of reports) assert.equal(r.ok, true, `round ${round}: a worker could not start: ${String(r.error)} ${String(r.stack)}`);
      // One set, the same for everyone: its 16 key-storage entries all open under its master key.
      assert.equal(new Set(reports.map((r) => r.units)).size, 1, `round ${round}: the processes saw different unit sets`);
      for (const r of reports) assert.deepEqual({ entries: r.entries, readable: r.readable }, { entries: 16, readable: 16 });
    }
  });
});
