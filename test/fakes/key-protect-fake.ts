/**
 * A FAKE of IBM Key Protect's public REST API v2 and of IBM Cloud IAM's API-key token exchange,
 * for tests. It is NOT Key Protect and shares no code with it: a node:http server that answers
 * the routes keyops uses with the shapes and status codes of the public documentation
 * (cloud.ibm.com/docs/key-protect, the `ibm-cloud-docs/key-protect` repository; and the field
 * names of IBM's own client libraries, `IBM/keyprotect-go-client`, `IBM/keyprotect-java-client`),
 * each route citing what it follows. Key material is real: AES-256-GCM under random material per
 * key version, so a tampered ciphertext really fails and a retired version really still unwraps.
 *
 * What it adds for tests: an injectable clock (`now`, `advance`) for the one-rotation-per-hour
 * rule, token expiry and the 30-second wait before enabling; API keys with the instances and role
 * each may use; per-key rate limits answering 429 with Retry-After; injected 5xx answers; a
 * rotation made "outside keyops" (as a rotation policy or the console would); request counters.
 *
 * What it cannot show (README, "IBM Key Protect"): real IAM tokens (JWTs; here opaque strings),
 * IAM roles beyond Reader/Writer/Manager, key rings, aliases, imported keys, dual authorization,
 * registrations, expiry (Deactivated keys), deletion, instance policies, the 24-hour window of
 * policy rotations (nothing fires by itself here), Key Protect's real rate limits and 429 body
 * (the public docs show none: the common error envelope is used), and its exact ciphertext.
 */
import { createCipheriv, createDecipheriv, randomBytes, randomUUID } from 'node:crypto';
import { once } from 'node:events';
import { type IncomingMessage, type Server, type ServerResponse, createServer } from 'node:http';
import type { AddressInfo } from 'node:net';

export type FakeRole = 'Reader' | 'Writer' | 'Manager';

export interface KeyProtectFakeOptions {
  /** The instance id (`bluemix-instance`); a random UUID by default. */
  instanceId?: string;
  /** API key → the instances it may use and its role there (Manager when not given). */
  apiKeys?: Record<string, { instances?: string[]; role?: FakeRole }>;
  /** Lifetime of issued tokens (`expires_in`); one hour, as IAM's. */
  tokenTtlSeconds?: number;
  /** The fake's clock, in ms; `advance` moves it on. Date.now by default. */
  now?: () => number;
}

interface FakeVersion {
  id: string;
  created: number;
  material: Buffer;
}

interface FakeKey {
  id: string;
  name: string;
  description: string | undefined;
  state: 1 | 2;
  created: number;
  updated: number;
  lastRotate: number | undefined;
  /** When the state last changed (for REQ_TOO_EARLY_ERR). */
  lastStateChange: number;
  versions: FakeVersion[];
  policy: { enabled: boolean; interval_month: number; created: number; updated: number } | undefined;
}

/**
 * The documented role table (concepts/manage-access.md, "service access roles"): Readers read,
 * list versions, wrap, unwrap and rewrap; Writers also create and rotate; only Managers disable,
 * enable and set policies (set-rotation-policy.md). Routes not listed need Reader.
 */
const RANK: Record<FakeRole, number> = { Reader: 0, Writer: 1, Manager: 2 };
const NEEDED_ROLE: Record<string, FakeRole> = { createKey: 'Writer', rotate: 'Writer', disable: 'Manager', enable: 'Manager' };

const ERROR_TYPE = 'application/vnd.ibm.kms.error+json';
const MORE_INFO = 'https://cloud.ibm.com/apidocs/key-protect';
const BASE64 = /^[A-Za-z0-9+/]*={0,2}$/;

/** Key Protect writes dates to the second: "2020-03-12T03:50:12Z". */
const kpDate = (ms: number) => new Date(ms).toISOString().replace(/\.\d{3}Z$/, 'Z');

class HttpError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    readonly reason: string,
    readonly errorMsg: string,
    readonly headers: Record<string, string> = {},
    readonly target?: string,
  ) {
    super(errorMsg);
  }
}

const notFound = () => new HttpError(404, 'KEY_NOT_FOUND_ERR', 'key does not exist', "Not Found: Key could not be retrieved: Please see 'reasons' for more details (KEY_NOT_FOUND_ERR)");
const invalidState = (action: string) =>
  new HttpError(409, 'KEY_ACTION_INVALID_STATE_ERR', 'Key is not in a valid state', `Conflict: Key is not in active state: ${action} could not be performed. Please see \`reasons\` for more details.`);
const badField = (field: string, what: string, action: string) =>
  new HttpError(400, 'INVALID_FIELD_ERR', `The field '${field}' must be: ${what}`, `Bad Request: ${action} with key could not be performed: Please see 'reasons' for more details (INVALID_FIELD_ERR)`, {}, field);
const unprocessable = () =>
  new HttpError(422, 'UNPROCESSABLE_CIPHERTEXT_ERR', 'The provided ciphertext is invalid or corrupted', "Unprocessable Entity: Please see 'reasons' for more details (UNPROCESSABLE_CIPHERTEXT_ERR)");

export class KeyProtectFake {
  readonly instanceId: string;
  /** Serves both Key Protect (`/api/v2/…`) and IAM (`/identity/token`). */
  endpoint = '';
  private readonly server: Server;
  private readonly keys = new Map<string, FakeKey>();
  private readonly tokens = new Map<string, { apiKey: string; expires: number }>();
  private readonly apiKeys: Record<string, { instances?: string[]; role?: FakeRole }>;
  private readonly ttl: number;
  private readonly clock: () => number;
  private offset = 0;
  private rateLimit: { requests: number; windowMs: number } | undefined;
  private readonly windows = new Map<string, { start: number; count: number }>();
  private faults: { status: number; remaining: number } | undefined;
  private readonly counts = new Map<string, number>();
  private readonly served = new Map<string, number>();

  private constructor(options: KeyProtectFakeOptions) {
    this.instanceId = options.instanceId ?? randomUUID();
    this.apiKeys = options.apiKeys ?? {};
    this.ttl = options.tokenTtlSeconds ?? 3600;
    this.clock = options.now ?? Date.now;
    this.server = createServer((req, res) => void this.handle(req, res));
  }

  static async start(options: KeyProtectFakeOptions = {}): Promise<KeyProtectFake> {
    const fake = new KeyProtectFake(options);
    fake.server.listen(0, '127.0.0.1');
    await once(fake.server, 'listening');
    fake.endpoint = `http://127.0.0.1:${(fake.server.address() as AddressInfo).port}`;
    return fake;
  }

  async close(): Promise<void> {
    this.server.closeAllConnections();
    this.server.close();
    await once(this.server, 'close');
  }

  // ---- test controls --------------------------------------------------------------------

  now(): number {
    return this.clock() + this.offset;
  }

  advance(ms: number): void {
    this.offset += ms;
  }

  /** Per key: at most `requests` per `windowMs` (by the fake's clock), then 429 + Retry-After. */
  setRateLimit(limit: { requests: number; windowMs: number } | undefined): void {
    this.rateLimit = limit;
    this.windows.clear();
  }

  /** The next `count` Key Protect requests answer `status` (e.g. 503). */
  failNext(count: number, status = 503): void {
    this.faults = { status, remaining: count };
  }

  /** Every token issued so far stops working (answers 401), as after a revocation. */
  revokeTokens(): void {
    this.tokens.clear();
  }

  /** A rotation keyops did not make (a policy's, or the console's); ignores the hourly limit. */
  rotateOutsideKeyops(keyId: string): string {
    return this.addVersion(this.key(keyId)).id;
  }

  /** Requests received per route (`token`, `createKey`, `metadata`, `versions`, `wrap`, …), refused ones too. */
  count(route: string): number {
    return this.counts.get(route) ?? 0;
  }

  /** Requests of a route that were carried out (answered below 400). */
  servedCount(route: string): number {
    return this.served.get(route) ?? 0;
  }

  versionIds(keyId: string): string[] {
    return this.key(keyId).versions.map((v) => v.id);
  }

  stateOf(keyId: string): number {
    return this.key(keyId).state;
  }

  policyOf(keyId: string): { enabled: boolean; interval_month: number } | undefined {
    const p = this.key(keyId).policy;
    return p && { enabled: p.enabled, interval_month: p.interval_month };
  }

  // ---- HTTP ---------------------------------------------------------------------------------

  private async handle(req: IncomingMessage, res: ServerResponse): Promise<void> {
    try {
      const chunks: Buffer[] = [];
      for await (const chunk of req) chunks.push(chunk as Buffer);
      const raw = Buffer.concat(chunks).toString('utf8');
      const url = new URL(req.url ?? '/', 'http://fake');
      if (req.method === 'POST' && url.pathname === '/identity/token') return this.token(req, raw, res);
      const m = /^\/api\/v2\/keys(?:\/([^/]+)(?:\/(metadata|versions|policies|actions\/([a-zA-Z]+)))?)?$/.exec(url.pathname);
      if (!m) throw new HttpError(404, 'NOT_FOUND_ERR', 'no such route', 'Not Found');
      const [, keyId, sub, action] = m;
      const route = action ?? sub ?? (keyId ? 'metadata' : 'createKey');
      this.counts.set(route, (this.counts.get(route) ?? 0) + 1);
      const role = this.authenticate(req);
      const needed = req.method === 'PUT' ? 'Manager' : (NEEDED_ROLE[route] ?? 'Reader');
      if (RANK[role] < RANK[needed]) throw new HttpError(403, 'FORBIDDEN_ERR', `${route} needs the ${needed} role`, 'Forbidden: The user does not have the role this action needs');
      if (this.faults && this.faults.remaining > 0) {
        this.faults.remaining--;
        throw new HttpError(this.faults.status, 'INTERNAL_SERVER_ERR', 'injected fault', 'Internal Server Error (injected by the fake)');
      }
      if (keyId) this.throttle(keyId);
      const body: unknown = raw.length > 0 ? JSON.parse(raw) : {};
      const out = this.route(req.method ?? 'GET', keyId, sub, action, url.searchParams, body as Record<string, unknown>);
      if (out === undefined || out.status < 400) this.served.set(route, (this.served.get(route) ?? 0) + 1);
      if (out === undefined) {
        res.writeHead(204).end();
      } else {
        res.writeHead(out.status, { 'content-type': 'application/json' }).end(JSON.stringify(out.body));
      }
    } catch (err) {
      const e = err instanceof HttpError ? err : err instanceof SyntaxError ? new HttpError(400, 'BAD_BODY_ERR', 'Invalid body data was passed', 'Bad Request: the body is not JSON') : new HttpError(500, 'INTERNAL_SERVER_ERR', String(err), 'Internal Server Error');
      // The documented error envelope (error-messages.md): metadata + resources[{errorMsg, reasons}].
      const reason = { code: e.code, message: e.reason, status: e.status, moreInfo: MORE_INFO, ...(e.target ? { target: { type: 'field', name: e.target } } : {}) };
      res
        .writeHead(e.status, { 'content-type': 'application/json', ...e.headers })
        .end(JSON.stringify({ metadata: { collectionType: ERROR_TYPE, collectionTotal: 1 }, resources: [{ errorMsg: e.errorMsg, reasons: [reason] }] }));
    }
  }

  /**
   * IAM `POST /identity/token` (IBM Cloud docs "Generating an IBM Cloud IAM token by using an API
   * key"): form `grant_type=urn:ibm:params:oauth:grant-type:apikey&apikey=…` → 200
   * {access_token, refresh_token, token_type: "Bearer", expires_in, expiration, scope}; an unknown
   * key → 400 {errorCode: "BXNIM0415E", errorMessage: "Provided API key could not be found."}.
   */
  private token(req: IncomingMessage, raw: string, res: ServerResponse): void {
    this.counts.set('token', (this.counts.get('token') ?? 0) + 1);
    const form = new URLSearchParams(raw);
    const json = (status: number, body: unknown) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    if (!String(req.headers['content-type']).startsWith('application/x-www-form-urlencoded') || form.get('grant_type') !== 'urn:ibm:params:oauth:grant-type:apikey') {
      return void json(400, { errorCode: 'FAKE_BAD_GRANT', errorMessage: 'the fake takes only the apikey grant, form-encoded' });
    }
    const apiKey = form.get('apikey') ?? '';
    if (!Object.hasOwn(this.apiKeys, apiKey)) return void json(400, { errorCode: 'BXNIM0415E', errorMessage: 'Provided API key could not be found.' });
    const token = randomBytes(24).toString('base64url');
    const now = this.now();
    this.tokens.set(token, { apiKey, expires: now + this.ttl * 1000 });
    json(200, { access_token: token, refresh_token: 'not_supported', token_type: 'Bearer', expires_in: this.ttl, expiration: Math.floor(now / 1000) + this.ttl, scope: 'ibm openid' });
  }

  /** `authorization: Bearer <token>` and `bluemix-instance`: 401 UNAUTHORIZED_ERR (error-messages.md §35) otherwise. */
  private authenticate(req: IncomingMessage): FakeRole {
    const unauthorized = () => new HttpError(401, 'UNAUTHORIZED_ERR', 'Unauthorized: The user does not have access to the specified resource', 'Unauthorized: The user does not have access to the specified resource');
    const bearer = /^Bearer (.+)$/.exec(String(req.headers.authorization ?? ''))?.[1];
    const token = bearer === undefined ? undefined : this.tokens.get(bearer);
    if (!token || token.expires <= this.now()) throw unauthorized();
    const grant = this.apiKeys[token.apiKey];
    const instance = String(req.headers['bluemix-instance'] ?? '');
    if (!grant || instance !== this.instanceId || (grant.instances && !grant.instances.includes(instance))) throw unauthorized();
    return grant.role ?? 'Manager';
  }

  private throttle(keyId: string): void {
    if (!this.rateLimit) return;
    const now = this.now();
    let w = this.windows.get(keyId);
    if (!w || now >= w.start + this.rateLimit.windowMs) this.windows.set(keyId, (w = { start: now, count: 0 }));
    if (++w.count > this.rateLimit.requests) {
      const seconds = Math.max(1, Math.ceil((w.start + this.rateLimit.windowMs - now) / 1000));
      throw new HttpError(429, 'TOO_MANY_REQUESTS', 'Too many requests', 'Too Many Requests: rate limit of the fake', { 'retry-after': String(seconds) });
    }
  }

  private route(method: string, keyId: string | undefined, sub: string | undefined, action: string | undefined, query: URLSearchParams, body: Record<string, unknown>) {
    if (!keyId) {
      if (method === 'POST') return this.createKey(body);
      throw new HttpError(405, 'METHOD_NOT_ALLOWED', 'not in the fake', 'Method Not Allowed');
    }
    const key = this.key(keyId);
    if (method === 'GET' && (sub === undefined || sub === 'metadata')) return this.collection('application/vnd.ibm.kms.key+json', [this.keyResource(key)]);
    if (method === 'GET' && sub === 'versions') return this.listVersions(key, query);
    if (sub === 'policies' && (method === 'GET' || method === 'PUT')) return method === 'GET' ? this.getPolicy(key) : this.putPolicy(key, body, query);
    if (method === 'POST' && action) return this.act(key, action, body);
    throw new HttpError(405, 'METHOD_NOT_ALLOWED', 'not in the fake', 'Method Not Allowed');
  }

  private key(keyId: string): FakeKey {
    const key = this.keys.get(keyId.toLowerCase());
    if (!key) throw notFound();
    return key;
  }

  private collection(type: string, resources: unknown[], extra: Record<string, unknown> = {}) {
    return { status: 200, body: { metadata: { collectionType: type, collectionTotal: resources.length, ...extra }, resources } };
  }

  /** The key resource of rotate-keys.md's GET /api/v2/keys example (metadata only, no payload). */
  private keyResource(key: FakeKey) {
    const latest = key.versions.at(-1)!;
    return {
      type: 'application/vnd.ibm.kms.key+json',
      id: key.id,
      name: key.name,
      ...(key.description ? { description: key.description } : {}),
      state: key.state,
      extractable: false,
      crn: `crn:v1:bluemix:public:kms:fake-region:a/fake-account:${this.instanceId}:key:${key.id}`,
      imported: false,
      creationDate: kpDate(key.created),
      createdBy: 'fake',
      algorithmType: 'AES',
      lastUpdateDate: kpDate(key.updated),
      ...(key.lastRotate !== undefined ? { lastRotateDate: kpDate(key.lastRotate) } : {}),
      keyVersion: { id: latest.id, creationDate: kpDate(latest.created) },
      dualAuthDelete: { enabled: false },
      deleted: false,
    };
  }

  /**
   * POST /api/v2/keys (create-root-keys.md): the key collection envelope with one resource;
   * `extractable: false` makes a root key; 201 with the created key (return=representation).
   */
  private createKey(body: Record<string, unknown>) {
    const resources = body.resources;
    const r = Array.isArray(resources) && resources.length === 1 ? (resources[0] as Record<string, unknown>) : undefined;
    if (!r || typeof r.name !== 'string' || r.name.length < 2 || r.name.length > 90) {
      throw new HttpError(400, 'BAD_BODY_ERR', 'Invalid body data was passed', "Bad Request: Body of the request is invalid: Please see 'reasons' for more details (BAD_BODY_ERR)");
    }
    if (r.extractable !== false) throw new HttpError(400, 'BAD_BODY_ERR', 'the fake makes root keys only (extractable: false)', 'Bad Request (fake: root keys only)');
    const now = this.now();
    const key: FakeKey = {
      id: randomUUID(),
      name: r.name,
      description: typeof r.description === 'string' ? r.description : undefined,
      state: 1,
      created: now,
      updated: now,
      lastRotate: undefined,
      lastStateChange: now,
      versions: [{ id: randomUUID(), created: now, material: randomBytes(32) }],
      policy: undefined,
    };
    this.keys.set(key.id, key);
    return { ...this.collection('application/vnd.ibm.kms.key+json', [this.keyResource(key)]), status: 201 };
  }

  /**
   * GET /api/v2/keys/{id}/versions (view-key-versions.md): newest first, {id, creationDate};
   * `limit`/`offset`/`totalCount` as the client libraries send them; 409 for a key that is not
   * active unless `allKeyStates=true`.
   */
  private listVersions(key: FakeKey, query: URLSearchParams) {
    if (key.state !== 1 && query.get('allKeyStates') !== 'true') throw invalidState('List key versions');
    const limit = Math.min(Number(query.get('limit') ?? 200) || 200, 5000);
    const offset = Number(query.get('offset') ?? 0) || 0;
    const newestFirst = [...key.versions].reverse().map((v) => ({ id: v.id, creationDate: kpDate(v.created) }));
    const page = newestFirst.slice(offset, offset + limit);
    return this.collection('application/vnd.ibm.kms.key.version+json', page, query.get('totalCount') === 'true' ? { totalCount: newestFirst.length } : {});
  }

  /** GET /api/v2/keys/{id}/policies?policy=rotation (set-rotation-policy.md, API section). */
  private getPolicy(key: FakeKey) {
    const p = key.policy;
    const resources = p
      ? [{ id: key.id, rotation: { enabled: p.enabled, interval_month: p.interval_month }, createdBy: 'fake', creationDate: kpDate(p.created), updatedBy: 'fake', lastUpdateDate: kpDate(p.updated) }]
      : [];
    return this.collection('application/vnd.ibm.kms.policy+json', resources);
  }

  /**
   * PUT /api/v2/keys/{id}/policies?policy=rotation: the policy collection envelope with
   * `rotation: {interval_month: 1–12, enabled}` (set-rotation-policy.md; keyprotect-go-client
   * policy.go `Rotation{Enabled, Interval "interval_month"}`); 200 with the policy.
   */
  private putPolicy(key: FakeKey, body: Record<string, unknown>, query: URLSearchParams) {
    const resources = body.resources;
    const rotation = Array.isArray(resources) ? ((resources[0] as Record<string, unknown> | undefined)?.rotation as Record<string, unknown> | undefined) : undefined;
    if (query.get('policy') !== 'rotation' || !rotation) throw new HttpError(400, 'BAD_BODY_ERR', 'Invalid body data was passed', 'Bad Request (fake: rotation policies only)');
    const enabled = rotation.enabled !== false;
    const months = rotation.interval_month ?? key.policy?.interval_month;
    if (typeof months !== 'number' || !Number.isInteger(months) || months < 1 || months > 12) {
      throw badField('interval_month', 'an integer between 1 and 12', 'Set policy');
    }
    const now = this.now();
    key.policy = { enabled, interval_month: months, created: key.policy?.created ?? now, updated: now };
    return this.getPolicy(key);
  }

  /** POST /api/v2/keys/{id}/actions/{action}. */
  private act(key: FakeKey, action: string, body: Record<string, unknown>) {
    const now = this.now();
    const aad = Array.isArray(body.aad) ? body.aad.map(String) : [];
    switch (action) {
      // rotate-keys.md: 204; error-messages.md §33: 409 KEY_ROTATION_NOT_PERMITTED within the hour
      // (no limit on a key's first rotation); the key-states table: Suspended keys do not rotate.
      case 'rotate': {
        if (key.state !== 1) throw invalidState('Rotate');
        if (key.lastRotate !== undefined && now - key.lastRotate < 3_600_000) {
          throw new HttpError(
            409,
            'KEY_ROTATION_NOT_PERMITTED',
            "This root key has been rotated within the last hour: Only one 'rotate' action per hour is permitted",
            'Conflict: Action could not be performed on key: Please see `reasons` for more details (KEY_ROTATION_NOT_PERMITTED)',
          );
        }
        this.addVersion(key);
        return undefined;
      }
      // wrap-keys.md: `plaintext` (base64) optional, else a generated 32-byte DEK returned as
      // `plaintext`; answers {ciphertext, keyVersion: {id}} (+ plaintext when generated).
      case 'wrap': {
        if (key.state !== 1) throw invalidState('Wrap');
        let plaintext: Buffer;
        if (body.plaintext === undefined) plaintext = randomBytes(32);
        else if (typeof body.plaintext === 'string' && BASE64.test(body.plaintext) && body.plaintext.length % 4 === 0) plaintext = Buffer.from(body.plaintext, 'base64');
        else throw badField('plaintext', 'a base64 encoded key material', 'Wrap');
        const latest = key.versions.at(-1)!;
        const out = { ciphertext: this.seal(key, latest, plaintext, aad), keyVersion: { id: latest.id } };
        return { status: 200, body: body.plaintext === undefined ? { plaintext: plaintext.toString('base64'), ...out } : out };
      }
      // unwrap-keys.md: {plaintext, keyVersion: {id}}; for a retired version also a rewrapped
      // `ciphertext` and its `rewrappedKeyVersion`. error-messages.md §5 (400 INVALID_FIELD_ERR)
      // and §27 (422 UNPROCESSABLE_CIPHERTEXT_ERR) for a bad ciphertext.
      case 'unwrap': {
        if (key.state !== 1) throw invalidState('Unwrap');
        const { version, plaintext } = this.open(key, body.ciphertext, aad, 'Unwrap');
        const latest = key.versions.at(-1)!;
        const retired = version !== latest ? { ciphertext: this.seal(key, latest, plaintext, aad), rewrappedKeyVersion: { id: latest.id } } : {};
        return { status: 200, body: { plaintext: plaintext.toString('base64'), keyVersion: { id: version.id }, ...retired } };
      }
      // rewrap-keys.md: {ciphertext, keyVersion: {id} (the original), rewrappedKeyVersion: {id}}.
      case 'rewrap': {
        if (key.state !== 1) throw invalidState('Rewrap');
        const { version, plaintext } = this.open(key, body.ciphertext, aad, 'Rewrap');
        const latest = key.versions.at(-1)!;
        return { status: 200, body: { ciphertext: this.seal(key, latest, plaintext, aad), keyVersion: { id: version.id }, rewrappedKeyVersion: { id: latest.id } } };
      }
      // disable-keys.md: 204, Active → Suspended (2); error-messages.md §7: 409
      // KEY_ACTION_INVALID_STATE_ERR when not active; enable: Suspended → Active, 409
      // REQ_TOO_EARLY_ERR (§26) within 30 seconds of the last state change.
      case 'disable':
      case 'enable': {
        if (key.state !== (action === 'disable' ? 1 : 2)) throw invalidState(action === 'disable' ? 'Key could not be disabled' : 'Key could not be enabled');
        if (action === 'enable' && now - key.lastStateChange < 30_000) {
          throw new HttpError(409, 'REQ_TOO_EARLY_ERR', 'The key was updated recently: Please wait and try again', "Conflict: Key could not be enabled: Please see 'reasons' for more details (REQ_TOO_EARLY_ERR)");
        }
        key.state = action === 'disable' ? 2 : 1;
        key.lastStateChange = now;
        key.updated = now;
        return undefined;
      }
      default:
        throw new HttpError(400, 'BAD_BODY_ERR', `action ${action} is not in the fake`, 'Bad Request');
    }
  }

  private addVersion(key: FakeKey): FakeVersion {
    const now = this.now();
    const version = { id: randomUUID(), created: now, material: randomBytes(32) };
    key.versions.push(version);
    key.lastRotate = now;
    key.updated = now;
    return version;
  }

  /**
   * The fake's ciphertext: base64 of JSON {ciphertext, iv, version, handle}, the layout a decoded
   * Key Protect ciphertext shows in rewrap-keys.md (handle = the key version). AES-256-GCM under
   * the version's material, the key id, handle and AAD strings authenticated.
   */
  private seal(key: FakeKey, version: FakeVersion, plaintext: Buffer, aad: string[]): string {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', version.material, iv);
    cipher.setAAD(Buffer.from(JSON.stringify([key.id, version.id, aad])));
    const ct = Buffer.concat([cipher.update(plaintext), cipher.final(), cipher.getAuthTag()]);
    return Buffer.from(JSON.stringify({ ciphertext: ct.toString('base64'), iv: iv.toString('base64'), version: '4.0.0', handle: version.id })).toString('base64');
  }

  private open(key: FakeKey, ciphertext: unknown, aad: string[], action: string): { version: FakeVersion; plaintext: Buffer } {
    if (typeof ciphertext !== 'string' || ciphertext.length === 0 || ciphertext.length % 4 !== 0 || !BASE64.test(ciphertext)) {
      throw badField('ciphertext', 'the original base64 encoded ciphertext from the wrap operation', action);
    }
    try {
      const inner = JSON.parse(Buffer.from(ciphertext, 'base64').toString('utf8')) as { ciphertext?: unknown; iv?: unknown; handle?: unknown };
      const version = key.versions.find((v) => v.id === inner.handle);
      if (!version || typeof inner.ciphertext !== 'string' || typeof inner.iv !== 'string') throw unprocessable();
      const data = Buffer.from(inner.ciphertext, 'base64');
      const decipher = createDecipheriv('aes-256-gcm', version.material, Buffer.from(inner.iv, 'base64'));
      decipher.setAAD(Buffer.from(JSON.stringify([key.id, version.id, aad])));
      decipher.setAuthTag(data.subarray(data.length - 16));
      return { version, plaintext: Buffer.concat([decipher.update(data.subarray(0, data.length - 16)), decipher.final()]) };
    } catch {
      throw unprocessable();
    }
  }
}
