import type { Command } from 'commander';
import { keyopsVersion, temporalSdkVersion } from '../../workers/version';
import type { GlobalOptions } from '../global-options';
import { emit } from '../output';
import { examples } from '../help-examples';

export function registerVersionCommand(program: Command): void {
  program
    .command('version')
    .description('print the keyops, Temporal SDK and Node.js versions')
    .addHelpText('after', examples('keyops version', 'keyops version --json'))
    .action((_opts: unknown, cmd: Command) => {
      const options = cmd.optsWithGlobals<GlobalOptions>();
      const data = { keyops: keyopsVersion, temporalSdk: temporalSdkVersion, node: process.version };
      emit(options, data, () => [`keyops ${data.keyops} (Temporal TypeScript SDK ${data.temporalSdk}, Node.js ${data.node})`]);
    });
}
