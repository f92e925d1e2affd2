import type { ConnectionFlags } from './connection';

/** Options every command accepts (declared once on the root program). */
export interface GlobalOptions extends ConnectionFlags {
  json?: boolean;
}
