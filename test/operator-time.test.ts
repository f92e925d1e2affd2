import assert from 'node:assert/strict';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, it } from 'node:test';
import { operatorTimeZone, showTime } from '../client/operator-time';
import { restoreDrill } from '../workflows';
import { keyops } from './helpers/child-process';
import { testServerAddress, uniqueTaskQueue, useSuiteFixture } from './helpers/temporal';
import { waitUntil } from './helpers/wait-until';

const dir = mkdtempSync(join(tmpdir(), 'keyops-operator-time-'));
after(() => rmSync(dir, { recursive: true, force: true }));

describe('times in the operator\'s time zone', () => {
  it('shows a time with its offset in the zone, across daylight saving time', () => {
    assert.equal(showTime('2026-12-07T18:20:05Z', 'Europe/Berlin'), '2026-12-07 19:20:05 +01:00');
    assert.equal(showTime('2026-07-07T18:20:05Z', 'Europe/Berlin'), '2026-07-07 20:20:05 +02:00');
    assert.equal(showTime(new Date('2026-12-07T18:20:05Z'), 'Asia/Kolkata'), '2026-12-07 23:50:05 +05:30');
    assert.equal(showTime('2026-12-07T18:20:05Z', 'UTC'), '2026-12-07 18:20:05 +00:00');
    assert.equal(showTime('2026-12-07T18:20:05Z', 'Mars/Olympus'), '2026-12-07 18:20:05 +00:00', 'an unknown zone falls back to UTC');
    assert.equal(showTime('not a time', 'UTC'), 'not a time');
  });

  it('takes the zone from KEYOPS_TIME_ZONE, else the schedule file, else UTC', () => {
    const file = join(dir, 'schedules.yaml');
    writeFileSync(file, 'timeZone: America/New_York\nbackups: []\n');
    assert.equal(operatorTimeZone({ KEYOPS_SCHEDULE_FILE: file }), 'America/New_York');
    assert.equal(operatorTimeZone({ KEYOPS_SCHEDULE_FILE: file, KEYOPS_TIME_ZONE: 'Asia/Tokyo' }), 'Asia/Tokyo');
    assert.equal(operatorTimeZone({}, dir), 'America/New_York', './schedules.yaml of the working directory');
    assert.equal(operatorTimeZone({ KEYOPS_SCHEDULE_FILE: join(dir, 'none.yaml') }), 'UTC');
    writeFileSync(join(dir, 'broken.yaml'), 'timeZone: Mars/Olympus\n');
    assert.equal(operatorTimeZone({ KEYOPS_SCHEDULE_FILE: join(dir, 'broken.yaml') }), 'UTC', 'an invalid file gives no zone');
  });
});

describe('keyops runs in the schedule file\'s time zone (dev server)', () => {
  const suite = useSuiteFixture('operator-time');

  it('lists a run\'s start in the zone the schedule file gives, and --json in UTC', async () => {
    const file = join(dir, 'kolkata.yaml');
    writeFileSync(file, 'timeZone: Asia/Kolkata\nbackups: []\n');
    // No worker: the run only needs to exist for the list.
    const handle = await suite.client.workflow.start(restoreDrill, { taskQueue: uniqueTaskQueue('operator-time'), workflowId: `drill/operator-time/${Date.now()}`, args: [{}] });
    try {
      const query = `WorkflowId = "${handle.workflowId}"`;
      const env = { TEMPORAL_ADDRESS: testServerAddress(), KEYOPS_SCHEDULE_FILE: file, KEYOPS_TIME_ZONE: '' };
      // Visibility lists a new run a moment after it starts.
      const started = await waitUntil('the run to be listed', async () => {
        const json = await keyops(['runs', '--query', query, '--json'], env);
        assert.equal(json.code, 0, json.stderr);
        return (JSON.parse(json.stdout) as { startTime: string }[])[0]?.startTime;
      });
      assert.match(started, /Z$/, '--json keeps UTC');
      const text = await keyops(['runs', '--query', query], env);
      assert.equal(text.code, 0, text.stderr);
      assert.ok(text.stdout.startsWith(`${showTime(started, 'Asia/Kolkata')}  `), text.stdout);
      assert.match(text.stdout, /^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \+05:30 /);
    } finally {
      await handle.terminate('test finished');
    }
  });
});
