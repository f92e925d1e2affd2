import pino, { type Logger } from 'pino';
import pretty from 'pino-pretty';
import type { WorkerConfig } from './config';

/** JSON lines for log shippers; a synchronous pretty stream for a human at a terminal. */
export function createLogger(config: Pick<WorkerConfig, 'logLevel' | 'logFormat'>): Logger {
  const options = { name: 'keyops-worker', level: config.logLevel };
  if (config.logFormat === 'pretty') {
    return pino(options, pretty({ colorize: true, sync: true, ignore: 'pid,hostname' }));
  }
  return pino(options);
}
