import { readFile, writeFile } from 'node:fs/promises';
import { EngineError } from './engine-error';
import { ProcessCommandRunner } from './process-command-runner';

/**
 * The server's options a scratch mariadbd on a restored backup needs, and only those: how to
 * reach the keys (the key-management plugin and its settings) and how the pages are encrypted.
 * The rest of a production option file (a 64 GB buffer pool, its port, binlog, replication,
 * audit plugins) is none of a check server's business and could keep it from starting.
 */
const NEEDED = /^--(?:loose[-_])?(?:plugin[-_]dir|plugin[-_]load(?:[-_]add)?|plugin[-_]maturity|hashicorp[-_]key[-_]management|file[-_]key[-_]management|aws[-_]key[-_]management|innodb[-_]encrypt|encrypt[-_]|lower[-_]case[-_]table[-_]names)/;

/** The option groups mariadbd reads. */
const SERVER_GROUPS = ['mysqld', 'server', 'mariadb', 'mariadbd', 'client-server'];

/**
 * Writes `target`: the InnoDB layout mariadb-backup recorded beside the data (backup-my.cnf:
 * page size, data files, undo and log settings the files were made with), then the key and
 * encryption options of the server's option file, read through my_print_defaults so its
 * !include and !includedir directives count.
 */
export async function writeCheckServerOptions(input: { serverConfig: string; dataDir: string; target: string; myPrintDefaults?: string }): Promise<void> {
  const tool = input.myPrintDefaults ?? 'my_print_defaults';
  let printed;
  try {
    printed = await new ProcessCommandRunner().run(tool, [`--defaults-file=${input.serverConfig}`, ...SERVER_GROUPS]);
  } catch (err) {
    throw new EngineError('INVALID_CONFIGURATION', `${tool} could not be started to read the server's option file: ${(err as Error).message}`);
  }
  if (printed.exitCode !== 0) throw new EngineError('INVALID_CONFIGURATION', `${tool} could not read the server's option file ${input.serverConfig}: ${(printed.stderr || printed.stdout).trim().slice(0, 500)}`);
  const server = printed.stdout
    .split('\n')
    .map((line) => line.trim())
    .filter((line) => NEEDED.test(line))
    // Of the plugins, only the key managers: an audit or authentication plugin has no place here.
    .filter((line) => !/^--(?:loose[-_])?plugin[-_]load/.test(line) || /key[-_]management/.test(line))
    .map((line) => line.replace(/^--/, ''));
  const recorded = await readFile(`${input.dataDir}/backup-my.cnf`, 'utf8').catch(() => '');
  const layout = sectionLines(recorded, 'mysqld');
  await writeFile(input.target, ['[mariadbd]', ...layout, ...server, ''].join('\n'), { mode: 0o600 });
}

/** The option lines of one section of an option file (comments and blank lines dropped). */
function sectionLines(text: string, section: string): string[] {
  const out: string[] = [];
  let inside = false;
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    if (!line || line.startsWith('#') || line.startsWith(';')) continue;
    const header = /^\[([^\]]+)\]$/.exec(line);
    if (header) {
      inside = header[1] === section;
      continue;
    }
    if (inside) out.push(line);
  }
  return out;
}
