import type { CommandRunner } from './command-runner';
import { classifyDb2Output } from './db2-messages';
import { EngineError } from './engine-error';

const DB_NAME = /^[A-Za-z][A-Za-z0-9_@#$]{0,7}$/;
const SAFE_PATH = /^\/[A-Za-z0-9_./-]*$/;

/**
 * The Db2 command line processor as keyops drives it: builds the commands (names and paths are
 * checked, never quoted into SQL blindly) and turns their output into results or typed errors.
 */
export class Db2Cli {
  constructor(
    private readonly runner: CommandRunner,
    private readonly db2 = 'db2',
  ) {}

  /** `BACKUP DATABASE <db> ONLINE TO <dir> ENCRYPT`: returns the image timestamp Db2 printed. */
  async backupDatabase(database: string, directory: string): Promise<{ timestamp: string; command: string }> {
    if (!DB_NAME.test(database)) throw new EngineError('INVALID_CONFIGURATION', `Db2 database name ${JSON.stringify(database)} must be 1 to 8 letters, digits or _@#$, starting with a letter`);
    if (!SAFE_PATH.test(directory)) throw new EngineError('INVALID_CONFIGURATION', `backup directory ${JSON.stringify(directory)} must be an absolute path of letters, digits and _./-`);
    const command = `BACKUP DATABASE ${database} ONLINE TO ${directory} ENCRYPT`;
    const result = await this.runner.run(this.db2, [command]);
    const failure = classifyDb2Output(`backup of ${database}`, result);
    if (failure) throw failure;
    const timestamp = /timestamp for this backup image is\s*:\s*(\d{14})/i.exec(result.stdout)?.[1];
    if (!timestamp) throw new EngineError('ENGINE_COMMAND_FAILED', `Db2 backup of ${database} reported success without an image timestamp: ${result.stdout.trim()}`);
    return { timestamp, command };
  }
}
