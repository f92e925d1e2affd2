import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after } from 'node:test';

/**
 * A webhook on a free local port that keeps every JSON body POSTed to it, as an operator's alert
 * endpoint would receive them; closed after the suite.
 */
export async function alertReceiver(): Promise<{ url: string; received: Record<string, unknown>[] }> {
  const received: Record<string, unknown>[] = [];
  const hook = createServer((req, res) => {
    let body = '';
    req.on('data', (c: Buffer) => (body += c.toString()));
    req.on('end', () => {
      received.push(JSON.parse(body) as Record<string, unknown>);
      res.writeHead(204).end();
    });
  });
  await new Promise<void>((r) => hook.listen(0, '127.0.0.1', r));
  after(() => hook.close());
  return { url: `http://127.0.0.1:${(hook.address() as AddressInfo).port}/alerts`, received };
}
