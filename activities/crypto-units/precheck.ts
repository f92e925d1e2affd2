import type { CryptoUnit } from './crypto-unit-set';

/**
 * The initial conditions of reference 002, checked before anything changes: what is wrong, one
 * line per problem (empty when the rotation may start). A failure here changes nothing.
 */
export function precheckProblems(units: readonly CryptoUnit[]): string[] {
  const selected = units.filter((u) => u.selected);
  if (selected.length === 0) return ['no crypto unit is selected'];
  const problems: string[] = [];
  const imprint = selected.filter((u) => u.imprintMode);
  if (imprint.length > 0) problems.push(`unit(s) ${ids(imprint)} are in imprint mode`);
  const thresholds = new Set(selected.map((u) => u.signatureThreshold));
  if (thresholds.size > 1) problems.push(`signature thresholds differ (${selected.map((u) => `unit ${u.unitId}: ${u.signatureThreshold}`).join(', ')})`);
  const common = selected.map((u) => new Set(u.administrators)).reduce((a, b) => new Set([...a].filter((x) => b.has(x))));
  const threshold = Math.max(...selected.map((u) => u.signatureThreshold));
  if (common.size < threshold) problems.push(`only ${common.size} administrator(s) are installed in every unit; the signature threshold needs ${threshold}`);
  const vps = new Set(selected.map((u) => (u.current.state === 'valid' ? u.current.verificationPattern : `${u.current.state}`)));
  if (selected.some((u) => u.current.state !== 'valid') || vps.size > 1) {
    problems.push(`the current master-key registers are not all valid with one verification pattern (${selected.map((u) => `unit ${u.unitId}: ${u.current.state} ${u.current.verificationPattern ?? ''}`.trim()).join(', ')})`);
  }
  // Not in reference 002's list, but auto-mk-rotate would overwrite these: a value left there by
  // an unfinished rotation may already protect part of key storage.
  const loaded = units.filter((u) => u.next.state !== 'empty');
  if (loaded.length > 0) problems.push(`unit(s) ${ids(loaded)} still hold a new master key from an unfinished rotation: finish that rotation (keyops mk status) before starting another`);
  const unselected = units.filter((u) => !u.selected);
  if (unselected.length > 0) problems.push(`unit(s) ${ids(unselected)} are not selected: every unit of the set must take part`);
  return problems;
}

const ids = (units: readonly CryptoUnit[]) => units.map((u) => u.unitId).join(', ');
