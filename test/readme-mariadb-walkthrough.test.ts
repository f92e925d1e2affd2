import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { useDevStack } from './helpers/dev-stack';
import { type ExpectedOutcome, freeOpenBaoPort, readmeBlock, runWalkthrough } from './helpers/readme-walkthrough';

const EXPECTED: ExpectedOutcome[] = [
  { command: /^KEYOPS_ENGINE=mariadb \.\/temporal-dev\.sh up -d$/, shows: /keyops is up\.[\s\S]*MariaDB +database shop, socket / },
  { command: /^\.\/temporal-dev\.sh mariadb -e 'SELECT COUNT\(\*\) FROM shop\.orders'$/, shows: /^10000$/m },
  { command: /^npx keyops backup run shop --night 2026-12-01 --wait$/, shows: /backup\/shop\/2026-12-01: \d+ bytes at .*\.kob, root key bao:mariadb-backups version 1/ },
  {
    command: /^npx keyops key rotate engine:shop --wait$/,
    shows: /rewrap\/engine:shop\/v2: key engine:shop rotated at version 2; database shop: \d+ tablespace\(s\) re-encrypted as far as version 2 asks \(oldest page version 1\)/,
  },
  { command: /^npx keyops key versions engine:shop$/, shows: /key engine:shop: 2 version\(s\), current 2\n +v1 +retired .* needed by pages of database shop, 1 backup\(s\) \(backup\/shop\/2026-12-01\)\n +v2 +current .* needed by pages of database shop/ },
  { command: /^npx keyops backup list --database shop$/, shows: /backup\/shop\/\S+ +good .* key bao:mariadb-backups v1 .* verified 10000 rows/ },
  { command: /^npx keyops backup restore backup\/shop\/2026-12-01 --to "\$KEYOPS_DATA_DIR\/restored-shop"$/, shows: /10000 rows/ },
  { command: /^\.\/temporal-dev\.sh down$/, shows: /stopped MariaDB[\s\S]*stopped OpenBao/ },
];

/**
 * The README's MariaDB walkthrough, run as written on its own stack: the script starts OpenBao
 * and a MariaDB whose tables are encrypted with keys in it, and keyops backs up, verifies on a
 * scratch server, catalogues and restores the demo database.
 */
describe('README walkthrough with MariaDB, run as written', () => {
  const stack = useDevStack('walkthrough-mariadb');

  it('starts MariaDB with its keys in OpenBao, backs up its demo database, lists and restores the backup', async () => {
    const commands = readmeBlock('walkthrough-mariadb');
    assert.ok(commands.length >= 5, `the README has a MariaDB walkthrough (${commands.length} commands)`);
    const env = { ...stack.env, TEMPORAL_ADDRESS: `127.0.0.1:${stack.ports.grpc}`, KEYOPS_OPENBAO_PORT: String(await freeOpenBaoPort()) };
    await runWalkthrough(commands, EXPECTED, env);
  });
});
