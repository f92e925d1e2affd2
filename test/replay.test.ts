import assert from 'node:assert/strict';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { historyFromJSON } from '@temporalio/common/lib/proto-utils';
import { Worker } from '@temporalio/worker';
import { workflowBundlePath } from './helpers/temporal';

const HISTORIES = join(__dirname, 'histories');

/** Every recorded history must replay on today's workflow code: the guard against non-determinism. */
describe('replay of recorded histories', () => {
  const files = readdirSync(HISTORIES).filter((f) => f.endsWith('.json')).sort();

  it('has recorded histories to replay', () => {
    assert.ok(files.length > 0, `no histories under ${HISTORIES}`);
  });

  it('replays every history under test/histories without a determinism error', async () => {
    const fileOf = new Map<string, string>();
    const histories = files.map((file) => {
      const history = historyFromJSON(JSON.parse(readFileSync(join(HISTORIES, file), 'utf8')));
      // The recorded id: a workflow that derives child ids from its own id replays only under it.
      const workflowId = history.events?.[0]?.workflowExecutionStartedEventAttributes?.workflowId ?? file;
      fileOf.set(workflowId, file);
      return { workflowId, history };
    });
    const failures: string[] = [];
    let replayed = 0;
    for await (const result of Worker.runReplayHistories({ workflowBundle: { codePath: workflowBundlePath() } }, histories)) {
      replayed++;
      if (result.error) failures.push(`${fileOf.get(result.workflowId) ?? result.workflowId}: ${String(result.error)}`);
    }
    assert.equal(replayed, files.length);
    assert.deepEqual(failures, []);
  });
});
