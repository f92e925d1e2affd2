import assert from 'node:assert/strict';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { removeStaleScratch } from '../activities/engines/mariadb-engine';
import { processAlive } from '../activities/process-alive';
import { waitUntil } from './helpers/wait-until';

/** A long-lived process whose command line names `args` (as a scratch mariadbd names its datadir). */
function holder(...args: string[]) {
  const child = spawn(process.execPath, ['-e', 'setInterval(() => {}, 1000)', '--', ...args], { stdio: 'ignore' });
  return child;
}

describe("scratch directories of a killed worker's MariaDB check", () => {
  const work = mkdtempSync(join(tmpdir(), 'keyops-scratch-'));
  const children: ReturnType<typeof holder>[] = [];
  after(() => {
    for (const c of children) c.kill('SIGKILL');
    rmSync(work, { recursive: true, force: true });
  });

  it("stops the orphaned check server on a dead worker's directory, then removes it; a reused pid and a live worker's directory are left alone", async () => {
    const dead = spawnSync('true').pid;
    const orphanDir = join(work, `check-${dead}-1-aaaaaa`);
    const reusedDir = join(work, `check-${dead}-2-bbbbbb`);
    const liveDir = join(work, `check-${process.pid}-3-cccccc`);
    for (const d of [orphanDir, reusedDir, liveDir]) mkdirSync(d);
    const orphan = holder(`--datadir=${orphanDir}`);
    // The pid file of the second directory names a process that is no check server of it.
    const stranger = holder('--datadir=/somewhere/else');
    children.push(orphan, stranger);
    await waitUntil('both holders to run', () => (orphan.pid && stranger.pid && processAlive(orphan.pid) && processAlive(stranger.pid) ? true : undefined), 10_000);
    writeFileSync(join(orphanDir, 'check.pid'), `${orphan.pid}\n`);
    writeFileSync(join(reusedDir, 'check.pid'), `${stranger.pid}\n`);
    const orphanGone = new Promise((r) => orphan.once('exit', r));

    await removeStaleScratch(work, 'check');

    await orphanGone;
    assert.equal(orphan.signalCode, 'SIGKILL', 'the orphaned check server was stopped');
    assert.equal(existsSync(orphanDir), false);
    assert.ok(processAlive(stranger.pid!), 'a process that merely reuses the pid is left alone');
    assert.equal(existsSync(reusedDir), false, "the dead worker's directory still goes");
    assert.ok(existsSync(liveDir), "this worker's own directory stays");
  });
});
