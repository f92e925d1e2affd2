/**
 * One of several processes hammering the same LocalKms file (test/local-kms.test.ts): after
 * printing `ready` it waits for `go` on stdin, then wraps, unwraps, rewraps and rotates, and
 * prints one JSON line with everything it produced. Argument: a JSON `ChildArgs`.
 *
 * The clock runs 3,600,000 times faster than real time (1 ms = 1 hour) from a base shared by
 * all processes, so the hourly rule lets rotations through while still refusing some.
 */
import { createHash } from 'node:crypto';
import { once } from 'node:events';
import { LocalKms } from '../../activities/kms/local-kms';
import { KmsError } from '../../activities/kms/kms-error';

export interface ChildArgs {
  path: string;
  masterSecretHex: string;
  keyId: string;
  name: string;
  simBaseMs: number;
  realBaseMs: number;
  iterations: number;
}

export interface ChildReport {
  name: string;
  wraps: { wdek: string; dekSha256: string }[];
  rotations: { requestId: string; version: number; rotated: boolean }[];
  notPermitted: number;
  unexpected: string[];
}

export const SIM_SPEEDUP = 3_600_000;

export const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

async function main(): Promise<void> {
  const args = JSON.parse(process.argv[2] ?? '{}') as ChildArgs;
  const kms = LocalKms.open({
    path: args.path,
    masterSecret: Buffer.from(args.masterSecretHex, 'hex'),
    now: () => new Date(args.simBaseMs + (Date.now() - args.realBaseMs) * SIM_SPEEDUP),
  });
  const report: ChildReport = { name: args.name, wraps: [], rotations: [], notPermitted: 0, unexpected: [] };
  const mine: { wdek: Buffer; dekSha256: string }[] = [];
  const record = (wdek: Buffer, dek: Buffer) => {
    const entry = { wdek, dekSha256: sha256(dek) };
    mine.push(entry);
    report.wraps.push({ wdek: wdek.toString('hex'), dekSha256: entry.dekSha256 });
  };
  const attempt = async (op: string, fn: () => Promise<void>) => {
    try {
      await fn();
    } catch (err) {
      if (op === 'rotate' && err instanceof KmsError && err.code === 'KEY_ROTATION_NOT_PERMITTED') report.notPermitted++;
      else report.unexpected.push(`${op}: ${err instanceof KmsError ? err.code : ''} ${String(err)}`);
    }
  };

  process.stdout.write('ready\n');
  process.stdin.setEncoding('utf8');
  let input = '';
  while (!input.includes('go')) input += String((await once(process.stdin, 'data'))[0]);
  process.stdin.pause();

  for (let i = 0; i < args.iterations; i++) {
    await attempt('wrap', async () => {
      const { wdek, dek } = await kms.wrap(args.keyId);
      record(wdek, dek);
    });
    const earlier = mine[Math.floor(Math.random() * mine.length)];
    if (earlier && i % 3 === 0) {
      await attempt('unwrap', async () => {
        const { dek } = await kms.unwrap(args.keyId, earlier.wdek);
        if (sha256(dek) !== earlier.dekSha256) report.unexpected.push('unwrap returned another DEK');
      });
    }
    if (earlier && i % 4 === 0) {
      await attempt('rewrap', async () => {
        const { wdek } = await kms.rewrap(args.keyId, earlier.wdek);
        const { dek } = await kms.unwrap(args.keyId, wdek);
        if (sha256(dek) !== earlier.dekSha256) report.unexpected.push('rewrap changed the DEK');
        record(wdek, dek);
      });
    }
    if (i % 10 === 0) {
      // Shared ids are tried by every process: at most one of them may rotate for each.
      for (const requestId of [`shared/${i}`, `${args.name}/${i}`]) {
        await attempt('rotate', async () => {
          const result = await kms.rotateKey(args.keyId, requestId);
          report.rotations.push({ requestId, ...result });
        });
      }
    }
  }
  kms.close();
  process.stdout.write(`${JSON.stringify(report)}\n`, () => process.exit(0));
}

if (require.main === module) {
  main().catch((err: unknown) => {
    process.stderr.write(`${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
    process.exit(1);
  });
}
