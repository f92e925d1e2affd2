import pkg from '../package.json';

export const keyopsVersion: string = pkg.version;
// Read from the installed package so the figure is what actually runs, not what was declared.
// eslint-disable-next-line @typescript-eslint/no-require-imports
export const temporalSdkVersion: string = (require('@temporalio/worker/package.json') as { version: string }).version;
