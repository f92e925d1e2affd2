import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { existsSync, readFileSync, readdirSync, statSync } from 'node:fs';
import { createServer } from 'node:net';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { ROOT, finish, keyops, runToEnd } from './helpers/child-process';
import { DEV_SCRIPT, useDevStack } from './helpers/dev-stack';
import { temporalCliPath } from './helpers/temporal';
import { keyopsSearchAttributes } from '../workflows/search-attributes';

const isAlive = (pid: number) => {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
};

/** Runs temporal-dev.sh on its own ports and data directory, beside the suite's server. */
describe('temporal-dev.sh', () => {
  const stack = useDevStack('dev');

  const pidOf = (name: 'temporal' | 'worker') => Number(readFileSync(join(stack.dataDir, 'run', `${name}.pid`), 'utf8'));

  it('--help teaches the commands and settings; an unknown command is exit 2', async () => {
    const help = await runToEnd(DEV_SCRIPT, ['--help'], { env: stack.env });
    assert.equal(help.code, 0);
    for (const text of ['up', 'down', 'status', 'logs', 'server-flags', 'KEYOPS_TEMPORAL_PORT', 'KEYOPS_UI_PORT', 'KEYOPS_DATA_DIR', '@v1.5.1']) {
      assert.ok(help.stdout.includes(text), `--help lacks ${text}`);
    }
    const bad = await runToEnd(DEV_SCRIPT, ['launch'], { env: stack.env });
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /unknown command: launch/);
  });

  it('refuses a port that something else holds, naming it, instead of hanging', async () => {
    const blocker = createServer().listen(0, '127.0.0.1');
    await once(blocker, 'listening');
    const { port } = blocker.address() as { port: number };
    try {
      const r = await runToEnd(DEV_SCRIPT, ['up', '-d'], { env: { ...stack.env, KEYOPS_TEMPORAL_PORT: String(port) }, timeoutMs: 120_000 });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, new RegExp(`port ${port} \\(Temporal gRPC\\) on 127\\.0\\.0\\.1 is already in use`));
      // The owner is named where iproute2's ss can see it (it is on Debian's base image).
      if (existsSync('/usr/bin/ss') || existsSync('/bin/ss')) assert.match(r.stderr, new RegExp(`in use by node \\(pid ${process.pid}\\)`));
      assert.match(r.stderr, /KEYOPS_TEMPORAL_PORT=/);
    } finally {
      blocker.close();
    }
  });

  it('a failed start stops the server it had started', async () => {
    const blocker = createServer().listen(stack.ports.metrics, '127.0.0.1');
    await once(blocker, 'listening');
    try {
      const r = await runToEnd(DEV_SCRIPT, ['up', '-d'], { env: stack.env, timeoutMs: 120_000 });
      assert.equal(r.code, 1, r.stderr);
      assert.match(r.stderr, new RegExp(`port ${stack.ports.metrics} \\(worker metrics\\)`));
      assert.match(r.stderr, /stopped the Temporal dev server/);
      assert.ok(!existsSync(join(stack.dataDir, 'run', 'temporal.pid')), 'no pid file left behind');
    } finally {
      blocker.close();
    }
  });

  it('up -d starts server, Web UI and a polling worker once; status and down behave', async () => {
    // The operator's Cloud settings must not leak into the local stack.
    const operatorCloud = { TEMPORAL_API_KEY: 'cloud-key', TEMPORAL_TLS: 'true', TEMPORAL_ADDRESS: 'example.tmprl.cloud:7233' };
    const up = await runToEnd(DEV_SCRIPT, ['up', '-d'], { env: { ...stack.env, ...operatorCloud }, timeoutMs: 180_000 });
    assert.equal(up.code, 0, up.stderr);
    assert.equal(up.stdout.trim(), `http://127.0.0.1:${stack.ports.ui}`);
    const [server, worker] = [pidOf('temporal'), pidOf('worker')];

    const ui = await fetch(`http://127.0.0.1:${stack.ports.ui}/`);
    assert.equal(ui.status, 200);
    assert.match(await ui.text(), /<html/i);

    const ping = await keyops(['ping', '--json'], { TEMPORAL_ADDRESS: `127.0.0.1:${stack.ports.grpc}` });
    assert.equal(ping.code, 0, ping.stderr);
    assert.equal((JSON.parse(ping.stdout) as { workers: unknown[] }).workers.length, 1);

    const attrs = await runToEnd(temporalCliPath(), ['operator', 'search-attribute', 'list', '--address', `127.0.0.1:${stack.ports.grpc}`, '-o', 'json']);
    for (const key of keyopsSearchAttributes) assert.ok(attrs.stdout.includes(`"${key.name}"`), `${key.name} registered`);

    const schedule = await runToEnd(temporalCliPath(), ['schedule', 'describe', '--schedule-id', 'watch-root-keys', '--address', `127.0.0.1:${stack.ports.grpc}`, '-o', 'json']);
    assert.equal(schedule.code, 0, `the hourly watcher schedule exists: ${schedule.stderr}`);
    assert.match(schedule.stdout, /watchRootKeys/);
    // First start: the demo data of keyops init, and schedules.yaml's nightly backup of it and
    // 30-day rotation of its key (by name).
    const demo = await keyops(['init', '--json'], { TEMPORAL_ADDRESS: `127.0.0.1:${stack.ports.grpc}` });
    assert.equal(demo.code, 0, demo.stderr);
    const schedules = await keyops(['schedule', 'list', '--json'], { TEMPORAL_ADDRESS: `127.0.0.1:${stack.ports.grpc}` });
    assert.deepEqual(
      (JSON.parse(schedules.stdout) as { scheduleId: string; workflowType: string }[]).map((r) => [r.scheduleId, r.workflowType]),
      [
        ['nightly-backup/demo', 'nightlyBackup'],
        [`rotate-key/${(JSON.parse(demo.stdout) as { keyId: string }).keyId}`, 'rotateRootKeyOnSchedule'],
        ['watch-root-keys', 'watchRootKeys'],
      ],
    );
    assert.deepEqual((({ created, databaseId, rows }) => ({ created, databaseId, rows }))(JSON.parse(demo.stdout) as { created: boolean; databaseId: string; rows: number }), {
      created: false,
      databaseId: 'demo',
      rows: 1000,
    });

    // Key stores, databases, the Temporal SQLite file, WAL and SHM files, logs: this user's only.
    const exposed: string[] = [];
    const walk = (dir: string) => {
      for (const entry of readdirSync(dir, { withFileTypes: true })) {
        const path = join(dir, entry.name);
        const mode = statSync(path).mode & 0o777;
        if (entry.isDirectory()) {
          if (mode !== 0o700) exposed.push(`${path} ${mode.toString(8)}`);
          walk(path);
        } else if (entry.isFile() && mode !== 0o600) {
          exposed.push(`${path} ${mode.toString(8)}`);
        }
      }
    };
    assert.equal(statSync(stack.dataDir).mode & 0o777, 0o700, 'the data directory is 0700');
    walk(stack.dataDir);
    assert.deepEqual(exposed, [], 'every directory 0700, every file 0600');

    const status = await runToEnd(DEV_SCRIPT, ['status'], { env: stack.env });
    assert.equal(status.code, 0, status.stdout + status.stderr);
    assert.match(status.stdout, new RegExp(`Temporal dev server\\s+running, pid ${server}`));
    assert.match(status.stdout, new RegExp(`keyops worker\\s+running, pid ${worker}, polling`));

    // The server runs with the storage and scheduler tuning `server-flags` shows (bench:fleet uses them).
    const flags = await runToEnd(DEV_SCRIPT, ['server-flags'], { env: stack.env });
    assert.equal(flags.code, 0, flags.stderr);
    const serverArgs = readFileSync(`/proc/${server}/cmdline`, 'utf8').split('\0');
    for (const flag of ['synchronous=NORMAL', 'worker.perNamespaceWorkerOptions={"StickyScheduleToStartTimeout":"60s"}', 'matching.longPollExpirationInterval="10s"']) assert.ok(flags.stdout.split('\n').includes(flag), `server-flags lacks ${flag}`);
    for (const flag of flags.stdout.trim().split('\n')) assert.ok(serverArgs.includes(flag), `the dev server was started without ${flag}`);

    const logs = await runToEnd(DEV_SCRIPT, ['logs', 'worker'], { env: stack.env });
    assert.equal(logs.code, 0, logs.stderr);
    assert.match(logs.stdout, /"msg":"worker started"/);

    const again = await runToEnd(DEV_SCRIPT, ['up', '-d'], { env: stack.env, timeoutMs: 60_000 });
    assert.equal(again.code, 0, again.stderr);
    assert.match(again.stderr, /already running/);
    assert.deepEqual([pidOf('temporal'), pidOf('worker')], [server, worker], 'no second server or worker');

    const down = await runToEnd(DEV_SCRIPT, ['down'], { env: stack.env, timeoutMs: 90_000 });
    assert.equal(down.code, 0, down.stderr);
    assert.ok(!isAlive(server) && !isAlive(worker), 'both processes ended');
    const stopped = await runToEnd(DEV_SCRIPT, ['status'], { env: stack.env });
    assert.equal(stopped.code, 3);
    assert.match(stopped.stdout, /Temporal dev server\s+stopped/);
  });

  it('Ctrl-C on a foreground up stops what it started', async () => {
    // detached: its own process group, so the group signal below is what a terminal's Ctrl-C sends.
    const child = spawn(DEV_SCRIPT, ['up'], { cwd: ROOT, env: { ...process.env, ...stack.env }, detached: true, stdio: ['ignore', 'pipe', 'pipe'] });
    const done = finish(child, 180_000);
    let stderr = '';
    child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
    for (let i = 0; !stderr.includes('following the worker log'); i++) {
      assert.ok(i < 1800 && child.exitCode === null, `up did not get ready: ${stderr}`);
      await new Promise((r) => setTimeout(r, 100));
    }
    const [server, worker] = [pidOf('temporal'), pidOf('worker')];
    process.kill(-child.pid!, 'SIGINT');
    const result = await done;
    assert.equal(result.code, 0, result.stderr);
    assert.ok(!isAlive(server) && !isAlive(worker), 'server and worker stopped');
    assert.match(stderr + result.stderr, /stopped the keyops worker/);
  });
});
