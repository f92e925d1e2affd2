/**
 * POSTs an alert (`{ event, ...details }`) to the operator's webhook; without one, does nothing.
 * A refusal throws, so the activity is retried.
 */
export async function postAlert(webhook: string | undefined, event: string, details: object): Promise<{ sent: boolean }> {
  if (!webhook) return { sent: false };
  const response = await fetch(webhook, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ event, ...details }),
    signal: AbortSignal.timeout(10_000),
  });
  if (!response.ok) throw new Error(`alert webhook answered HTTP ${response.status}`);
  return { sent: true };
}
