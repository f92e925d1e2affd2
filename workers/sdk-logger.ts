import type { LogLevel, LogMetadata, Logger as SdkLogger } from '@temporalio/common';
import type { Logger as PinoLogger } from 'pino';

/**
 * Routes the Temporal SDK's own logs (worker, core, workflow and activity loggers) into pino,
 * so one stream carries everything. `sdkComponent` stays in the metadata for filtering.
 */
export class PinoSdkLogger implements SdkLogger {
  constructor(private readonly pino: PinoLogger) {}

  log(level: LogLevel, message: string, meta?: LogMetadata): void {
    const fields = meta ?? {};
    // The bulk worker has no workflows by design; the SDK warns about that at every start.
    if (level === 'WARN' && message.startsWith('No workflows registered') && String(fields.taskQueue).endsWith('-bulk')) level = 'DEBUG';
    switch (level) {
      case 'TRACE':
        return this.pino.trace(fields, message);
      case 'DEBUG':
        return this.pino.debug(fields, message);
      case 'INFO':
        return this.pino.info(fields, message);
      case 'WARN':
        return this.pino.warn(fields, message);
      case 'ERROR':
        return this.pino.error(fields, message);
    }
  }
  trace(message: string, meta?: LogMetadata): void {
    this.log('TRACE', message, meta);
  }
  debug(message: string, meta?: LogMetadata): void {
    this.log('DEBUG', message, meta);
  }
  info(message: string, meta?: LogMetadata): void {
    this.log('INFO', message, meta);
  }
  warn(message: string, meta?: LogMetadata): void {
    this.log('WARN', message, meta);
  }
  error(message: string, meta?: LogMetadata): void {
    this.log('ERROR', message, meta);
  }
}
