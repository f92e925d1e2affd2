/**
 * One of several worker processes starting together on a new data directory
 * (test/worker-start-race.test.ts): after printing `ready` it waits for `go` on stdin, opens the
 * worker's adapters exactly as workers/main.ts does, and prints one JSON line: the crypto-unit set
 * it found and whether its key storage opens, or the error that would stop the worker.
 */
import { once } from 'node:events';
import pino from 'pino';
import { openAdapters } from '../../workers/adapters';
import { loadWorkerConfig } from '../../workers/config';

async function main() {
  const config = loadWorkerConfig(process.env, false);
  process.stdout.write('ready\n');
  await once(process.stdin, 'data');
  try {
    const adapters = openAdapters(config, pino({ level: 'silent' }));
    const units = adapters.cryptoUnitSet(adapters.kmsUnitSet);
    const storage = await units.checkKeyStorage();
    const vps = new Set((await units.listUnits()).map((u) => u.current.verificationPattern));
    adapters.close();
    process.stdout.write(`${JSON.stringify({ ok: true, units: vps.size === 1 ? [...vps][0] : [...vps], ...storage })}\n`);
  } catch (err) {
    process.stdout.write(`${JSON.stringify({ ok: false, error: err instanceof Error ? err.message : String(err), stack: err instanceof Error ? err.stack : undefined })}\n`);
  }
}

void main();
