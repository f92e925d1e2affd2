import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { CryptoUnitError } from './crypto-unit-set';
import { SimulatedCryptoUnits } from './simulated-crypto-units';

const SET_ID = /^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/;

/** The simulated unit sets under one directory (`<data>/crypto-units/<id>.sqlite`), opened once each. */
export class SimulatedUnitSets {
  private readonly open = new Map<string, SimulatedCryptoUnits>();

  constructor(private readonly dir: string) {}

  pathOf(unitSetId: string): string {
    if (!SET_ID.test(unitSetId)) throw new CryptoUnitError('COMMAND_FAILED', `crypto-unit set id ${JSON.stringify(unitSetId)} must be 1 to 63 letters, digits, "_", "." or "-"`);
    return join(this.dir, `${unitSetId}.sqlite`);
  }

  exists(unitSetId: string): boolean {
    return this.open.has(unitSetId) || existsSync(this.pathOf(unitSetId));
  }

  get(unitSetId: string): SimulatedCryptoUnits {
    let set = this.open.get(unitSetId);
    if (!set) {
      set = SimulatedCryptoUnits.open(this.pathOf(unitSetId));
      this.open.set(unitSetId, set);
    }
    return set;
  }

  /** Creates the set (3 units, 16 key-storage entries by default) unless it exists. */
  create(unitSetId: string, options?: Parameters<typeof SimulatedCryptoUnits.create>[1]): SimulatedCryptoUnits {
    const set = SimulatedCryptoUnits.create(this.pathOf(unitSetId), options);
    this.open.get(unitSetId)?.close();
    this.open.set(unitSetId, set);
    return set;
  }

  close(): void {
    for (const set of this.open.values()) set.close();
    this.open.clear();
  }
}
