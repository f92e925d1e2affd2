#!/usr/bin/env node
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { Payload, PayloadCodec } from '@temporalio/common';
import pino, { type Logger } from 'pino';
import { z } from 'zod';
import { PayloadCodecError } from './payload-codec';
import { PAYLOAD_KEY_VARIABLE, PayloadKeyError, loadPayloadCodec } from './payload-keys';

/**
 * Temporal's codec-server protocol (docs.temporal.io/codec-server; samples-go codec-server/
 * protocol.md): POST …/encode and …/decode with `{ payloads: [...] }`, each payload in proto3
 * JSON (bytes as base64). The Web UI calls it from the browser, so it answers CORS for the UI's
 * origin; the `temporal` CLI (--codec-endpoint) sends no Origin and needs none.
 */

// A history page's payloads come in one request; Temporal limits one payload to 2 MB by default.
const MAX_BODY_BYTES = 32 * 1024 * 1024;

const jsonPayloadSchema = z.object({
  metadata: z.record(z.string(), z.string()).nullish(),
  data: z.string().nullish(),
});
const bodySchema = z.object({ payloads: z.array(jsonPayloadSchema) });

function fromJson(p: z.infer<typeof jsonPayloadSchema>): Payload {
  return {
    metadata: Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64')])),
    data: Buffer.from(p.data ?? '', 'base64'),
  };
}

function toJson(p: Payload): { metadata: Record<string, string>; data?: string } {
  const metadata = Object.fromEntries(Object.entries(p.metadata ?? {}).map(([k, v]) => [k, Buffer.from(v).toString('base64')]));
  // proto3 JSON leaves empty bytes out.
  return p.data?.length ? { metadata, data: Buffer.from(p.data).toString('base64') } : { metadata };
}

class HttpError extends Error {
  constructor(
    readonly status: number,
    message: string,
  ) {
    super(message);
  }
}

async function readBody(req: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > MAX_BODY_BYTES) throw new HttpError(413, `request body over ${MAX_BODY_BYTES} bytes`);
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

export interface CodecServerOptions {
  codec: PayloadCodec;
  /** Browser origins allowed to call (the Web UI's, e.g. http://127.0.0.1:8233); exact match. */
  allowedOrigins: readonly string[];
  logger: Logger;
}

export function createCodecServer({ codec, allowedOrigins, logger }: CodecServerOptions): Server {
  const allowed = new Set(allowedOrigins);
  return createServer((req, res) => {
    void handle(req, res).catch((err: unknown) => {
      const status = err instanceof HttpError ? err.status : err instanceof PayloadCodecError ? 400 : 500;
      // Messages name key ids and sizes only; payload contents never reach the log.
      const message = err instanceof Error ? err.message : String(err);
      (status >= 500 ? logger.error : logger.warn).call(logger, { method: req.method, url: req.url, status, err: message }, 'codec request failed');
      if (!res.headersSent) {
        res.writeHead(status, { 'content-type': 'text/plain; charset=utf-8' });
      }
      res.end(status >= 500 ? 'internal error\n' : `${message}\n`);
    });
  });

  async function handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    const origin = req.headers.origin;
    if (origin !== undefined) {
      // A page from anywhere else must not get our decryption, even through a simple request
      // the browser would send without a preflight.
      if (!allowed.has(origin)) throw new HttpError(403, `origin ${origin} is not allowed (KEYOPS_CODEC_ORIGINS)`);
      res.setHeader('access-control-allow-origin', origin);
      res.setHeader('vary', 'Origin');
    }
    if (req.method === 'OPTIONS') {
      res.writeHead(204, {
        'access-control-allow-methods': 'POST, OPTIONS',
        'access-control-allow-headers': 'content-type, x-namespace, authorization',
        'access-control-max-age': '600',
        // Chrome's Private Network Access preflight, for a UI on a public address.
        ...(req.headers['access-control-request-private-network'] === 'true' ? { 'access-control-allow-private-network': 'true' } : {}),
      });
      res.end();
      return;
    }
    // The protocol looks only at the last path segment, so the endpoint can sit under any prefix.
    const operation = new URL(req.url ?? '/', 'http://codec').pathname.replace(/\/+$/, '').split('/').pop();
    if (operation !== 'encode' && operation !== 'decode') throw new HttpError(404, 'not found: POST …/encode or …/decode');
    if (req.method !== 'POST') {
      res.setHeader('allow', 'POST, OPTIONS');
      throw new HttpError(405, `${operation} takes POST`);
    }
    let body;
    try {
      body = bodySchema.parse(JSON.parse(await readBody(req)));
    } catch (err) {
      if (err instanceof HttpError) throw err;
      throw new HttpError(400, 'expected JSON {"payloads": [{"metadata": {...}, "data": "<base64>"}]}');
    }
    const payloads = body.payloads.map(fromJson);
    const converted = operation === 'encode' ? await codec.encode(payloads) : await codec.decode(payloads);
    logger.debug({ operation, namespace: req.headers['x-namespace'], payloads: payloads.length }, 'codec request');
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(JSON.stringify({ payloads: converted.map(toJson) }));
  }
}

const HOST_PORT = /^(?<host>[A-Za-z0-9.\-_]+|\[[0-9a-fA-F:]+\]):(?<port>\d{1,5})$/;
const codecServerConfigSchema = z.object({
  KEYOPS_CODEC_ADDRESS: z
    .string()
    .regex(HOST_PORT, 'expected host:port, e.g. 127.0.0.1:8234')
    .default('127.0.0.1:8234'),
  KEYOPS_CODEC_ORIGINS: z
    .string()
    .default('http://127.0.0.1:8233,http://localhost:8233')
    .transform((v) => v.split(',').map((o) => o.trim()))
    .pipe(
      z.array(
        z.string().refine((o) => {
          try {
            return new URL(o).origin === o;
          } catch {
            return false;
          }
        }, 'each origin is scheme://host[:port], no path or trailing slash (e.g. http://127.0.0.1:8233)'),
      ),
    ),
  KEYOPS_LOG_LEVEL: z.enum(['trace', 'debug', 'info', 'warn', 'error']).default('info'),
});

async function main(): Promise<number> {
  const present = Object.fromEntries(Object.entries(process.env).filter(([, v]) => v !== undefined && v !== ''));
  const parsed = codecServerConfigSchema.safeParse(present);
  if (!parsed.success) {
    const problems = parsed.error.issues.map((i) => `${i.path.join('.')}=${JSON.stringify(process.env[String(i.path[0])] ?? '')}: ${i.message}`);
    process.stderr.write(`keyops-codec-server: invalid configuration:\n${problems.map((p) => `  - ${p}`).join('\n')}\n`);
    return 2;
  }
  const config = parsed.data;
  const logger = pino({ name: 'keyops-codec-server', level: config.KEYOPS_LOG_LEVEL });
  let codec;
  try {
    codec = loadPayloadCodec(process.env);
  } catch (err) {
    if (!(err instanceof PayloadKeyError)) throw err;
    logger.error(err.message);
    return 2;
  }
  if (!codec) {
    logger.error(`${PAYLOAD_KEY_VARIABLE} is not set: the codec server has no key to decode with`);
    return 2;
  }
  const { host, port } = HOST_PORT.exec(config.KEYOPS_CODEC_ADDRESS)!.groups!;
  const server = createCodecServer({ codec, allowedOrigins: config.KEYOPS_CODEC_ORIGINS, logger });
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(Number(port), host!.replace(/^\[|\]$/g, ''), () => resolve());
    });
  } catch (err) {
    logger.error({ err: err instanceof Error ? err.message : String(err) }, `cannot listen on KEYOPS_CODEC_ADDRESS ${config.KEYOPS_CODEC_ADDRESS}`);
    return 2;
  }
  logger.info(
    { address: config.KEYOPS_CODEC_ADDRESS, origins: config.KEYOPS_CODEC_ORIGINS, currentKeyId: codec.currentKeyId, keyIds: codec.keyIds },
    'codec server started',
  );
  await new Promise<void>((resolve) => {
    for (const signal of ['SIGINT', 'SIGTERM'] as const) process.once(signal, () => resolve());
  });
  server.closeAllConnections();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  logger.info('codec server stopped');
  return 0;
}

if (require.main === module) {
  main().then(
    (code) => process.exit(code),
    (err: unknown) => {
      process.stderr.write(`keyops-codec-server: fatal: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
      process.exit(1);
    },
  );
}
