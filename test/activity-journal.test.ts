import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { hostname, tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import type { Context } from '@temporalio/activity';
import { ActivityJournal, journalOf, readJournal } from '../workers/activity-journal';
import { ROOT } from './helpers/child-process';

const CHILD = join(ROOT, 'test', 'helpers', 'activity-journal-child.ts');

/** A worker process that starts `activities` (`id` runs on, `id:done` ends at once), then is SIGKILLed. */
async function killedWorker(dir: string, activities: string[]): Promise<number> {
  const child = spawn(process.execPath, ['--import', 'tsx', CHILD, dir, ...activities], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
  // Killed as soon as it says it runs them: no later write can have saved the journal.
  while (!out.includes('running')) {
    if (child.exitCode !== null) throw new Error(`the child worker exited ${child.exitCode}`);
    await once(child.stdout, 'data');
  }
  child.kill('SIGKILL');
  await once(child, 'exit');
  return child.pid!;
}

const info = (activityId: string) => ({ workflowExecution: { workflowId: `wf-${activityId}`, runId: `run-${activityId}` }, activityId, activityType: 'verifyBackupImage', attempt: 2 });

/** An attempt as the journal records it. */
const entry = (activityId: string) => ({ workflowId: `wf-${activityId}`, runId: `run-${activityId}`, activityId, activityType: 'verifyBackupImage', attempt: 2 });

describe('the activity journal', () => {
  const dirs: string[] = [];
  const newDir = () => {
    const dir = mkdtempSync(join(tmpdir(), 'keyops-journal-'));
    dirs.push(dir);
    return dir;
  };
  after(() => dirs.forEach((d) => rmSync(d, { recursive: true, force: true })));

  it('keeps an activity a worker was SIGKILLed right after starting, and forgets the ones that ended', async () => {
    const dir = newDir();
    const pid = await killedWorker(dir, ['a-1', 'a-2:done', 'a-3']);
    const journal = new ActivityJournal(dir);
    try {
      const orphans = journal.orphans();
      assert.equal(orphans.length, 1);
      assert.equal(orphans[0]!.pid, pid);
      assert.equal(orphans[0]!.identity, `${pid}@${hostname()}`);
      assert.deepEqual(orphans[0]!.activities.map((a) => a.activityId).sort(), ['a-1', 'a-3']);
      assert.deepEqual(orphans[0]!.activities.find((a) => a.activityId === 'a-1'), { workflowId: 'wf-a-1', runId: 'run-a-1', activityId: 'a-1', activityType: 'backupDatabase', attempt: 1 });
    } finally {
      journal.close();
    }
  });

  it('does not take a live worker, or itself, for a dead one', async () => {
    const dir = newDir();
    const child = spawn(process.execPath, ['--import', 'tsx', CHILD, dir, 'live-1'], { cwd: ROOT, stdio: ['ignore', 'pipe', 'inherit'] });
    try {
      let out = '';
      child.stdout.setEncoding('utf8').on('data', (d: string) => (out += d));
      while (!out.includes('running')) {
        if (child.exitCode !== null) throw new Error(`the child worker exited ${child.exitCode}`);
        await once(child.stdout, 'data');
      }
      assert.deepEqual(readJournal(journalOf(dir, child.pid!)!)?.activities.map((a) => a.activityId), ['live-1']);
      const journal = new ActivityJournal(dir);
      try {
        let release!: () => void;
        const running = journal.interceptor({ info: info('own-1') } as unknown as Context).inbound!.execute!({ args: [], headers: {} }, () => new Promise<void>((r) => (release = r)));
        assert.deepEqual(journal.orphans(), []);
        release();
        await running;
      } finally {
        journal.close();
      }
    } finally {
      child.kill('SIGKILL');
      await once(child, 'exit');
    }
  });

  it('stays small over a night of activities, and a clean stop removes it', async () => {
    const dir = newDir();
    const journal = new ActivityJournal(dir);
    let release!: () => void;
    const held = journal.interceptor({ info: info('held') } as unknown as Context).inbound!.execute!({ args: [], headers: {} }, () => new Promise<void>((r) => (release = r)));
    for (let i = 0; i < 10_000; i++) await journal.interceptor({ info: info(`n-${i}`) } as unknown as Context).inbound!.execute!({ args: [], headers: {} }, () => Promise.resolve(i));
    const file = journalOf(dir, process.pid)!;
    // 20,000 lines appended, but rewritten to the one still running every 2,000 or so.
    assert.ok(statSync(file).size < 400_000, `journal of ${statSync(file).size} bytes`);
    assert.deepEqual(readJournal(file)?.activities.map((a) => a.activityId), ['held']);
    release();
    await held;
    assert.deepEqual(readJournal(file)?.activities, []);
    journal.close();
    assert.deepEqual(readdirSync(dir), []);
  });

  it('a journal it cannot write never fails the activity, and is whole again once it can', async () => {
    const dir = newDir();
    const journal = new ActivityJournal(dir);
    const run = (id: string, body: () => Promise<unknown>) => journal.interceptor({ info: info(id) } as unknown as Context).inbound!.execute!({ args: [], headers: {} }, body);
    assert.equal(await run('before', () => Promise.resolve('ok')), 'ok');
    // The directory goes away under the worker. Appends still reach the unlinked file, but the
    // compaction after 2,000 lines cannot write its new file, and neither can any change after.
    rmSync(dir, { recursive: true, force: true });
    let release!: () => void;
    const held = run('held', () => new Promise<void>((r) => (release = r)));
    for (let i = 0; i < 1_100; i++) assert.equal(await run(`during-${i}`, () => Promise.resolve('still ok')), 'still ok');
    assert.equal(existsSync(dir), false);
    mkdirSync(dir, { recursive: true });
    assert.equal(await run('after', () => Promise.resolve('ok')), 'ok');
    // Rewritten whole on the first write that worked: the attempt still running is in it.
    assert.deepEqual(readJournal(journalOf(dir, process.pid)!)?.activities.map((a) => a.activityId), ['held']);
    release();
    await held;
    journal.close();
  });

  it("reads the whole-file journal of earlier workers, and skips a line a crash cut short", () => {
    const dir = newDir();
    // A pid that is not running: above the kernel's pid_max.
    const deadPid = 4_194_304 + 17;
    writeFileSync(join(dir, `${deadPid}.json`), JSON.stringify({ pid: deadPid, identity: `${deadPid}@${hostname()}`, host: hostname(), activities: [entry('old-1')] }));
    const cut = deadPid + 1;
    writeFileSync(
      join(dir, `${cut}.log`),
      [JSON.stringify({ pid: cut, identity: `${cut}@${hostname()}`, host: hostname() }), JSON.stringify({ '+': entry('new-1') }), JSON.stringify({ '+': entry('new-2') }), JSON.stringify({ '-': 'run-new-1/new-1' }), '{"+":{"workflowId":"wf-new-3","ru'].join('\n'),
    );
    writeFileSync(join(dir, 'notes.txt'), 'not a journal');
    const journal = new ActivityJournal(dir);
    try {
      const byPid = new Map(journal.orphans().map((o) => [o.pid, o.activities.map((a) => a.activityId)]));
      assert.deepEqual(byPid, new Map([[deadPid, ['old-1']], [cut, ['new-2']]]));
      assert.equal(readFileSync(join(dir, 'notes.txt'), 'utf8'), 'not a journal');
    } finally {
      journal.close();
    }
  });
});
