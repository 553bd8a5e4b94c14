// A real OpenID provider (oidc-provider 9.x) for grantkeeper's test suite.
//
//   node server.mjs --port N [--host 127.0.0.1] [--exit-on-stdin-close]
//                   [--resource-indicators] [--cimd]
//
// --resource-indicators: RFC 8707 on; a `resource` gets a JWT access token whose `aud`
//   is the resource (what an MCP server checks). --cimd: client ids may be URLs of
//   client ID metadata documents, fetched and checked here (and discovery says so).
//
// Prints exactly one line `READY <issuer>` on stdout when it accepts requests.
// Everything under /__control is a test-only control API (no auth); /api is a
// small protected resource server that accepts this provider's access tokens.
// See tests/support/oidc.py for the Python side.

import * as crypto from 'node:crypto';
import * as http from 'node:http';
import * as querystring from 'node:querystring';
import { Readable } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';

import Provider from 'oidc-provider';

// ---------------------------------------------------------------- arguments

function parseArgs(argv) {
  const out = {
    port: 0, host: '127.0.0.1', exitOnStdinClose: false, resourceIndicators: false, cimd: false,
  };
  for (let i = 0; i < argv.length; i += 1) {
    const arg = argv[i];
    if (arg === '--port') {
      out.port = Number.parseInt(argv[++i], 10);
    } else if (arg.startsWith('--port=')) {
      out.port = Number.parseInt(arg.slice(7), 10);
    } else if (arg === '--host') {
      out.host = argv[++i];
    } else if (arg === '--exit-on-stdin-close') {
      out.exitOnStdinClose = true;
    } else if (arg === '--resource-indicators') {
      out.resourceIndicators = true;
    } else if (arg === '--cimd') {
      out.cimd = true;
    } else {
      throw new Error(`unknown argument ${arg}`);
    }
  }
  if (!Number.isInteger(out.port) || out.port < 0 || out.port > 65535) {
    throw new Error('--port must be an integer 0-65535');
  }
  return out;
}

const args = parseArgs(process.argv.slice(2));

// ---------------------------------------------------------------- mutable test state

const DEFAULT_TTL = Object.freeze({
  AccessToken: 60, RefreshToken: 24 * 60 * 60, IdToken: 60, ClientCredentials: 600,
});

function freshStats() {
  return {
    token: { authorization_code: 0, refresh_token: 0, client_credentials: 0, total: 0 },
    token_requests: [],
    // a refresh token presented again after it was used (reuse: oidc-provider then revokes
    // the whole grant), and one presented that the provider no longer knows
    refresh_reuse: 0,
    refresh_unknown: 0,
    // per token answer: client port and times (the chaos harness counts kill windows)
    token_log: [],
    revocation: 0,
    revocation_requests: [],
    userinfo: 0,
    introspection: 0,
    api: 0,
    cimd_fetches: [],
    discovery: 0,
    jwks: 0,
    // faults applied, per target and mode (queued or from a policy)
    faults: {},
  };
}

const state = {
  account: 'alice',
  deny: false,
  ttl: { ...DEFAULT_TTL },
  faults: { token: [], revocation: [], discovery: [], jwks: [], userinfo: [] },
  // sticky per-target faults applied with a probability while their queue is empty
  policy: {},
  idTokenDefect: null,
  issMode: null,
  // extra members merged into every successful token response (e.g. refresh_token_expires_in)
  tokenExtras: {},
  // browser origins allowed to call userinfo (CORS), besides the client's redirect origins
  corsOrigins: [],
  stats: freshStats(),
};

// a short, non-reversible tag of a token for the stats (never the token itself)
function tokenTag(token) {
  return crypto.createHash('sha256').update(token).digest('hex').slice(0, 16);
}

function resetState() {
  state.account = 'alice';
  state.deny = false;
  state.ttl = { ...DEFAULT_TTL };
  state.faults = { token: [], revocation: [], discovery: [], jwks: [], userinfo: [] };
  state.policy = {};
  state.idTokenDefect = null;
  state.issMode = null;
  state.tokenExtras = {};
  state.corsOrigins = [];
  state.stats = freshStats();
  releaseHeld();
}

// ---------------------------------------------------------------- fault modes
//
// Each target (token, revocation, discovery, jwks, userinfo) has a queue (each request
// pops one) and an optional sticky policy (applied with `probability` to every request
// while the queue is empty). Modes, and whether the request is processed:
//   status        {status, retry_after?, error?, raw_body?}  not processed, that answer
//   invalid_grant (token only)                               not processed, 400
//   drop_after                                               processed, socket destroyed
//   delay         {ms}                                       processed, answer delayed
//   split         {chunk=16, pause_ms=20}                    processed, body in pieces
//   truncate      {bytes?}                                   processed, 2xx cut short
//   hold          {ms?, then: 'answer' | 'drop'}             processed, held back (until
//                                                            ms or POST /__control/release)
//   none                                                     a pass-through slot

const FAULT_TARGETS = ['token', 'revocation', 'discovery', 'jwks', 'userinfo'];
const AFTER_MODES = ['drop_after', 'delay', 'split', 'truncate', 'hold'];
const FAULT_MODES = new Set(['status', 'invalid_grant', 'none', ...AFTER_MODES]);

function validFault(target, f) {
  if (!f || typeof f !== 'object' || !FAULT_MODES.has(f.mode)) return false;
  if (f.mode === 'invalid_grant' && target !== 'token') return false;
  if (f.probability !== undefined && !(typeof f.probability === 'number' && f.probability >= 0 && f.probability <= 1)) return false;
  return true;
}

function nextFault(target) {
  let fault = state.faults[target].shift();
  if (!fault) {
    const p = state.policy[target];
    if (p && Math.random() < (p.probability ?? 1)) fault = p;
  }
  if (fault && fault.mode !== 'none') {
    const counts = state.stats.faults[target] ?? (state.stats.faults[target] = {});
    counts[fault.mode] = (counts[fault.mode] ?? 0) + 1;
  }
  return fault;
}

// answers held back by `hold` without ms, released by POST /__control/release or reset
const held = new Set();

function releaseHeld() {
  const waiting = [...held];
  held.clear();
  for (const resolve of waiting) resolve();
  return waiting.length;
}

function holdBack(ctx, ms) {
  return new Promise((resolve) => {
    let timer;
    const done = () => {
      held.delete(done);
      if (timer) clearTimeout(timer);
      resolve();
    };
    if (typeof ms === 'number') timer = setTimeout(done, ms);
    else held.add(done);
    ctx.req.socket.once('close', done);
  });
}

function bodyBytes(ctx) {
  const { body } = ctx;
  if (body === null || body === undefined) return Buffer.alloc(0);
  if (Buffer.isBuffer(body)) return body;
  if (typeof body === 'string') return Buffer.from(body, 'utf8');
  if (typeof body.pipe === 'function') return null; // a stream: left alone
  if (!ctx.response.get('Content-Type')) ctx.type = 'json';
  return Buffer.from(JSON.stringify(body), 'utf8');
}

// Write the answer ourselves: `pieces` bytes at a time with `pauseMs` between them,
// stopping after `limit` bytes (then the socket is destroyed: a body cut short).
async function writeRaw(ctx, { piece, pauseMs, limit }) {
  const raw = bodyBytes(ctx);
  if (raw === null) return;
  const headers = { ...ctx.response.headers, 'content-length': String(raw.length) };
  delete headers['transfer-encoding'];
  ctx.respond = false;
  const { res } = ctx;
  res.writeHead(ctx.status, headers);
  const end = Math.min(raw.length, limit ?? raw.length);
  for (let at = 0; at < end; at += piece) {
    if (res.destroyed) return;
    res.write(raw.subarray(at, Math.min(at + piece, end)));
    if (pauseMs > 0 && at + piece < end) await sleep(pauseMs);
  }
  if (limit !== undefined && limit < raw.length) {
    await sleep(pauseMs || 20);
    ctx.req.socket.destroy();
    return;
  }
  res.end();
}

// What happens to an answer the provider already produced (the request was processed).
async function afterProcessing(ctx, fault) {
  if (!fault) return;
  switch (fault.mode) {
    case 'delay':
      await sleep(Number(fault.ms ?? 1000));
      return;
    case 'drop_after':
      ctx.respond = false;
      ctx.req.socket.destroy();
      return;
    case 'split':
      await writeRaw(ctx, {
        piece: Math.max(1, Number(fault.chunk ?? 16)),
        pauseMs: Number(fault.pause_ms ?? 20),
      });
      return;
    case 'truncate': {
      const raw = bodyBytes(ctx);
      const cut = Number(fault.bytes ?? Math.floor((raw?.length ?? 2) / 2));
      await writeRaw(ctx, { piece: 1 << 20, pauseMs: 0, limit: Math.max(0, cut) });
      return;
    }
    case 'hold':
      await holdBack(ctx, fault.ms === undefined || fault.ms === null ? undefined : Number(fault.ms));
      if (fault.then === 'drop' || ctx.req.socket.destroyed) {
        ctx.respond = false;
        ctx.req.socket.destroy();
      }
      return;
    default:
  }
}

// ---------------------------------------------------------------- unbounded Map adapter

const GRANTABLE = new Set([
  'AccessToken',
  'AuthorizationCode',
  'RefreshToken',
  'DeviceCode',
  'BackchannelAuthenticationRequest',
  'PreAuthorizedCode',
]);

// key `${model}:${id}` -> { payload, expiresAt (ms epoch or Infinity) }
const store = new Map();
// grantId -> Set of keys
const grantIndex = new Map();
// session uid -> session id; user code -> id
const sessionUids = new Map();
const userCodes = new Map();

function liveEntry(key) {
  const entry = store.get(key);
  if (!entry) return undefined;
  if (entry.expiresAt <= Date.now()) {
    dropKey(key);
    return undefined;
  }
  return entry;
}

function dropKey(key) {
  const entry = store.get(key);
  store.delete(key);
  if (!entry) return;
  const { payload } = entry;
  if (payload.grantId && grantIndex.has(payload.grantId)) {
    const keys = grantIndex.get(payload.grantId);
    keys.delete(key);
    if (keys.size === 0) grantIndex.delete(payload.grantId);
  }
  if (payload.uid && sessionUids.get(payload.uid) === key) sessionUids.delete(payload.uid);
  if (payload.userCode && userCodes.get(payload.userCode) === key) userCodes.delete(payload.userCode);
}

// Lazy expiry plus a periodic sweep so a long session does not grow forever.
setInterval(() => {
  const now = Date.now();
  for (const [key, entry] of store) {
    if (entry.expiresAt <= now) dropKey(key);
  }
}, 30_000).unref();

class MapAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const key = this.key(id);
    if (store.has(key)) dropKey(key);
    const expiresAt = typeof expiresIn === 'number' ? Date.now() + expiresIn * 1000 : Infinity;
    store.set(key, { payload, expiresAt });
    if (GRANTABLE.has(this.model) && payload.grantId) {
      if (!grantIndex.has(payload.grantId)) grantIndex.set(payload.grantId, new Set());
      grantIndex.get(payload.grantId).add(key);
    }
    if (this.model === 'Session' && payload.uid) sessionUids.set(payload.uid, key);
    if (payload.userCode) userCodes.set(payload.userCode, key);
  }

  async find(id) {
    if (args.cimd && this.model === 'Client' && /^https?:\/\//.test(id)) return fetchClientMetadata(id);
    return liveEntry(this.key(id))?.payload;
  }

  async findByUid(uid) {
    const key = sessionUids.get(uid);
    return key ? liveEntry(key)?.payload : undefined;
  }

  async findByUserCode(userCode) {
    const key = userCodes.get(userCode);
    return key ? liveEntry(key)?.payload : undefined;
  }

  async consume(id) {
    const entry = liveEntry(this.key(id));
    if (entry) entry.payload.consumed = Math.floor(Date.now() / 1000);
  }

  async destroy(id) {
    dropKey(this.key(id));
  }

  async revokeByGrantId(grantId) {
    const keys = grantIndex.get(grantId);
    if (!keys) return;
    for (const key of [...keys]) {
      if (key.startsWith(`${this.model}:`)) dropKey(key);
    }
  }
}

// ---------------------------------------------------------------- client ID metadata documents

// draft-ietf-oauth-client-id-metadata-document: the client id is the document's URL and
// the document's client_id must equal it; anything else is no client at all.
async function fetchClientMetadata(url) {
  let doc;
  let status;
  try {
    const res = await fetch(url, { redirect: 'manual', headers: { accept: 'application/json' } });
    status = res.status;
    doc = status === 200 ? await res.json() : undefined;
  } catch {
    doc = undefined;
  }
  const ok = Boolean(doc) && doc.client_id === url && Array.isArray(doc.redirect_uris);
  state.stats.cimd_fetches.push({ url, status: status ?? null, accepted: ok });
  if (!ok) return undefined;
  const allowed = [
    'client_id', 'client_name', 'client_uri', 'redirect_uris', 'grant_types', 'response_types',
    'token_endpoint_auth_method', 'scope', 'logo_uri',
  ];
  return Object.fromEntries(Object.entries(doc).filter(([k]) => allowed.includes(k)));
}

// ---------------------------------------------------------------- keys

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingJwk = {
  ...privateKey.export({ format: 'jwk' }),
  kid: crypto.randomBytes(8).toString('hex'),
  alg: 'RS256',
  use: 'sig',
};

function b64u(input) {
  return Buffer.from(input).toString('base64url');
}

function decodeJwt(jwt) {
  const [h, p, s] = jwt.split('.');
  return {
    header: JSON.parse(Buffer.from(h, 'base64url').toString('utf8')),
    payload: JSON.parse(Buffer.from(p, 'base64url').toString('utf8')),
    signature: s,
  };
}

function signRs256(header, payload) {
  const input = `${b64u(JSON.stringify(header))}.${b64u(JSON.stringify(payload))}`;
  const sig = crypto.sign('sha256', Buffer.from(input), privateKey).toString('base64url');
  return `${input}.${sig}`;
}

function makeDefectiveIdToken(idToken, kind, clientId) {
  const { header, payload, signature } = decodeJwt(idToken);
  const now = Math.floor(Date.now() / 1000);
  switch (kind) {
    case 'wrong_nonce':
      return signRs256(header, { ...payload, nonce: `wrong-${crypto.randomBytes(8).toString('hex')}` });
    case 'wrong_aud':
      return signRs256(header, { ...payload, aud: 'some-other-client', azp: undefined });
    case 'wrong_iss':
      return signRs256(header, { ...payload, iss: 'https://evil.example' });
    case 'expired':
      return signRs256(header, { ...payload, iat: now - 7200, exp: now - 3600 });
    case 'missing_azp_multi_aud': {
      const { azp, ...rest } = payload;
      return signRs256(header, { ...rest, aud: [clientId ?? payload.aud, 'other'] });
    }
    case 'bad_signature': {
      const raw = Buffer.from(signature, 'base64url');
      for (let i = 0; i < raw.length; i += 7) raw[i] ^= 0x5a;
      const [h, p] = idToken.split('.');
      return `${h}.${p}.${raw.toString('base64url')}`;
    }
    case 'alg_none':
      return `${b64u(JSON.stringify({ alg: 'none', typ: 'JWT' }))}.${b64u(JSON.stringify(payload))}.`;
    default:
      throw new Error(`unknown id token defect ${kind}`);
  }
}

const ID_TOKEN_DEFECTS = new Set([
  'wrong_nonce', 'wrong_aud', 'wrong_iss', 'bad_signature', 'alg_none', 'expired',
  'missing_azp_multi_aud',
]);

// ---------------------------------------------------------------- accounts

function displayName(id) {
  return id ? id.charAt(0).toUpperCase() + id.slice(1) : id;
}

async function findAccount(_ctx, id) {
  // Any account id works: alice, bob, carol, or whatever a test sets.
  return {
    accountId: id,
    async claims() {
      return {
        sub: id,
        email: `${id}@example.test`,
        email_verified: true,
        name: `${displayName(id)} Example`,
      };
    },
  };
}

// ---------------------------------------------------------------- helpers

async function readRaw(req, limit = 10 * 1024 * 1024) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > limit) throw Object.assign(new Error('body too large'), { status: 413 });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks, size);
}

async function readJson(ctx) {
  const raw = await readRaw(ctx.req);
  if (raw.length === 0) return {};
  try {
    return JSON.parse(raw.toString('utf8'));
  } catch {
    ctx.throw(400, 'invalid JSON body');
  }
  return {};
}

function clientAuthOf(ctx, form) {
  const authz = ctx.get('authorization');
  if (authz && /^basic\s/i.test(authz)) {
    let clientId;
    try {
      const decoded = Buffer.from(authz.slice(6).trim(), 'base64').toString('utf8');
      const i = decoded.indexOf(':');
      clientId = decodeURIComponent(decoded.slice(0, i).replace(/\+/g, '%20'));
    } catch {
      clientId = undefined;
    }
    return { method: 'basic', clientId };
  }
  if (form.client_secret !== undefined) return { method: 'post', clientId: form.client_id };
  if (form.client_assertion !== undefined) return { method: 'jwt', clientId: undefined };
  return { method: 'none', clientId: form.client_id };
}

const METHOD_NAMES = {
  basic: 'client_secret_basic',
  post: 'client_secret_post',
  none: 'none',
};

function oauthErrorFor(status) {
  if (status === 503) return 'temporarily_unavailable';
  if (status === 429) return 'slow_down';
  if (status === 401) return 'invalid_client';
  if (status >= 400 && status < 500) return 'invalid_request';
  return 'server_error';
}

function answerStatusFault(ctx, fault) {
  const status = Number(fault.status ?? 503);
  ctx.status = status;
  if (fault.retry_after !== undefined && fault.retry_after !== null) {
    ctx.set('Retry-After', String(fault.retry_after));
  }
  ctx.set('Cache-Control', 'no-store');
  if (fault.raw_body !== undefined) {
    ctx.type = fault.content_type ?? 'text/html';
    ctx.body = String(fault.raw_body);
    return;
  }
  ctx.body = {
    error: fault.error ?? oauthErrorFor(status),
    error_description: fault.error_description ?? `injected fault (HTTP ${status})`,
  };
}

// Reads an x-www-form-urlencoded body ahead of oidc-provider and hands it the
// buffer through req.body (its documented fallback for pre-parsed bodies).
async function preReadForm(ctx) {
  if (!ctx.is('application/x-www-form-urlencoded')) return {};
  const raw = await readRaw(ctx.req, 56 * 1024);
  ctx.req.body = raw;
  return querystring.parse(raw.toString('utf8'));
}

// Enforce the registered client authentication method (RFC 7591
// token_endpoint_auth_method); oidc-provider alone accepts basic and post
// interchangeably.
async function enforceAuthMethod(provider, ctx, auth) {
  if (!auth.clientId || !(auth.method in METHOD_NAMES)) return true;
  const client = await provider.Client.find(String(auth.clientId));
  if (!client) return true; // let the provider answer invalid_client
  const registered = client.clientAuthMethod;
  if (registered === METHOD_NAMES[auth.method]) return true;
  ctx.status = 401;
  ctx.set('Cache-Control', 'no-store');
  ctx.body = {
    error: 'invalid_client',
    error_description: `client authentication failed (registered ${registered}, used ${METHOD_NAMES[auth.method]})`,
  };
  return false;
}

function bearerOf(ctx) {
  const authz = ctx.get('authorization');
  const m = /^Bearer\s+(\S+)\s*$/i.exec(authz || '');
  return m ? m[1] : undefined;
}

function queryObject(searchParams) {
  const out = {};
  for (const [k, v] of searchParams) {
    if (k in out) {
      out[k] = Array.isArray(out[k]) ? [...out[k], v] : [out[k], v];
    } else {
      out[k] = v;
    }
  }
  return out;
}

async function revokeAccountGrants(provider, account) {
  let grants = 0;
  for (const [key, entry] of [...store]) {
    if (!key.startsWith('Grant:') || entry.payload.accountId !== account) continue;
    const grantId = key.slice('Grant:'.length);
    for (const model of GRANTABLE) {
      await new MapAdapter(model).revokeByGrantId(grantId);
    }
    dropKey(key);
    grants += 1;
  }
  // Also log the account out everywhere.
  for (const [key, entry] of [...store]) {
    if (key.startsWith('Session:') && entry.payload.accountId === account) dropKey(key);
  }
  return grants;
}

// ---------------------------------------------------------------- provider

function buildProvider(issuer) {
  const configuration = {
    adapter: MapAdapter,
    findAccount,
    jwks: { keys: [signingJwk] },
    cookies: { keys: [crypto.randomBytes(32).toString('base64url')] },
    clockTolerance: 0,
    rotateRefreshToken: true,
    clientBasedCORS(ctx, origin, client) {
      if (origin === 'null') return false;
      if (state.corsOrigins.includes(origin)) return true;
      if (ctx.oidc.route === 'userinfo' || client.clientAuthMethod === 'none') {
        return client.redirectUris.some((uri) => URL.parse(uri)?.origin === origin);
      }
      return false;
    },
    pkce: { required: () => true },
    responseTypes: ['code'],
    scopes: ['openid', 'offline_access', 'profile', 'email', 'api:read'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name'],
    },
    features: {
      devInteractions: { enabled: false },
      revocation: { enabled: true },
      userinfo: { enabled: true },
      introspection: { enabled: true },
      // RFC 6749 4.4 (grantkeeper's client_credentials grants)
      clientCredentials: { enabled: true },
      ...(args.resourceIndicators ? {
        resourceIndicators: {
          enabled: true,
          useGrantedResource: () => true,
          getResourceServerInfo: (_ctx, resourceIndicator) => ({
            scope: 'mcp:tools mcp:admin',
            audience: resourceIndicator,
            accessTokenTTL: state.ttl.AccessToken,
            accessTokenFormat: 'jwt',
            jwt: { sign: { alg: 'RS256' } },
          }),
        },
      } : {}),
      registration: {
        enabled: true,
        initialAccessToken: false,
        // Secrets with characters that must be form-urlencoded for HTTP Basic
        // (RFC 6749 2.3.1): a client that base64s the raw secret fails.
        async secretFactory() {
          return `${crypto.randomBytes(24).toString('base64')}+/=%:${crypto.randomBytes(6).toString('base64url')}`;
        },
      },
    },
    interactions: {
      url(_ctx, interaction) {
        return `/interaction/${interaction.uid}`;
      },
    },
    ttl: {
      AccessToken: () => state.ttl.AccessToken,
      RefreshToken: () => state.ttl.RefreshToken,
      IdToken: () => state.ttl.IdToken,
      ClientCredentials: () => state.ttl.ClientCredentials,
      AuthorizationCode: () => 60,
      Interaction: () => 10 * 60,
      Session: () => 24 * 60 * 60,
      Grant: () => 14 * 24 * 60 * 60,
    },
    ...(args.cimd ? { discovery: { client_id_metadata_document_supported: true } } : {}),
    renderError(ctx, out, _error) {
      ctx.type = 'html';
      const esc = (s) => String(s).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
      const rows = Object.entries(out).map(([k, v]) => `<p><b>${esc(k)}</b>: ${esc(v)}</p>`).join('');
      ctx.body = `<!DOCTYPE html><html><head><title>oops! something went wrong</title></head><body><h1>oops! something went wrong</h1>${rows}</body></html>`;
    },
  };
  return new Provider(issuer, configuration);
}

function installRoutes(provider) {
  // Runs before oidc-provider's own router (Provider#use inserts ahead of it).
  provider.use(async (ctx, next) => {
    const { path, method } = ctx;

    // ------------------------------------------------------------ control API
    if (path.startsWith('/__control/')) {
      ctx.set('Cache-Control', 'no-store');
      const route = `${method} ${path}`;
      switch (route) {
        case 'POST /__control/reset':
          resetState();
          ctx.body = { ok: true };
          return;
        case 'GET /__control/stats':
          ctx.body = state.stats;
          return;
        case 'GET /__control/state':
          ctx.body = {
            account: state.account,
            deny: state.deny,
            ttl: state.ttl,
            faults: state.faults,
            policy: state.policy,
            held: held.size,
            id_token_defect: state.idTokenDefect,
            iss_mode: state.issMode,
          };
          return;
        case 'POST /__control/account': {
          const body = await readJson(ctx);
          if (body.account !== undefined) {
            if (typeof body.account !== 'string' || !body.account) ctx.throw(400, 'account must be a non-empty string');
            state.account = body.account;
          }
          if (body.deny !== undefined) state.deny = Boolean(body.deny);
          ctx.body = { account: state.account, deny: state.deny };
          return;
        }
        case 'POST /__control/ttl': {
          const body = await readJson(ctx);
          for (const [k, v] of Object.entries(body)) {
            if (!(k in DEFAULT_TTL)) ctx.throw(400, `unknown ttl ${k}`);
            if (!Number.isInteger(v) || v <= 0) ctx.throw(400, `ttl ${k} must be a positive integer`);
            state.ttl[k] = v;
          }
          ctx.body = state.ttl;
          return;
        }
        case 'POST /__control/faults': {
          const body = await readJson(ctx);
          for (const [k, v] of Object.entries(body)) {
            if (!FAULT_TARGETS.includes(k)) ctx.throw(400, `unknown fault target ${k}`);
            if (!Array.isArray(v)) ctx.throw(400, `${k} must be a list`);
            for (const f of v) {
              if (!validFault(k, f)) ctx.throw(400, `bad fault ${JSON.stringify(f)}`);
            }
            state.faults[k].push(...v);
          }
          ctx.body = state.faults;
          return;
        }
        case 'POST /__control/fault-policy': {
          const body = await readJson(ctx);
          for (const [k, v] of Object.entries(body)) {
            if (!FAULT_TARGETS.includes(k)) ctx.throw(400, `unknown fault target ${k}`);
            if (v === null) {
              delete state.policy[k];
            } else {
              if (!validFault(k, v)) ctx.throw(400, `bad fault ${JSON.stringify(v)}`);
              state.policy[k] = v;
            }
          }
          ctx.body = state.policy;
          return;
        }
        case 'POST /__control/release':
          ctx.body = { released: releaseHeld() };
          return;
        case 'POST /__control/id-token-defect': {
          const body = await readJson(ctx);
          if (body.kind === 'none' || body.kind === null) {
            state.idTokenDefect = null;
          } else if (ID_TOKEN_DEFECTS.has(body.kind)) {
            state.idTokenDefect = body.kind;
          } else {
            ctx.throw(400, `unknown defect ${body.kind}`);
          }
          ctx.body = { kind: state.idTokenDefect ?? 'none' };
          return;
        }
        case 'POST /__control/cors-origins': {
          const { origins } = await readJson(ctx);
          if (!Array.isArray(origins) || !origins.every((o) => typeof o === 'string')) ctx.throw(400, 'origins must be a list of strings');
          state.corsOrigins = origins;
          ctx.body = { ok: true, origins };
          return;
        }
        case 'POST /__control/iss-mode': {
          const body = await readJson(ctx);
          if (!['normal', 'missing', 'foreign', 'trailing_slash'].includes(body.mode)) {
            ctx.throw(400, `unknown iss mode ${body.mode}`);
          }
          state.issMode = body.mode === 'normal' ? null : body.mode;
          ctx.body = { mode: body.mode };
          return;
        }
        case 'POST /__control/token-extras': {
          const body = await readJson(ctx);
          if (!body || typeof body !== 'object' || Array.isArray(body)) ctx.throw(400, 'an object of extra members');
          state.tokenExtras = body;
          ctx.body = state.tokenExtras;
          return;
        }
        case 'GET /__control/client-secrets': {
          // what a dynamically registered client received (tests look for it in the vault's storage)
          const clientId = ctx.query.client_id;
          const client = liveEntry(`Client:${clientId}`)?.payload;
          const tokens = [...store]
            .filter(([k, e]) => k.startsWith('RegistrationAccessToken:') && e.payload.clientId === clientId)
            .map(([k]) => k.slice('RegistrationAccessToken:'.length));
          ctx.body = { client_secret: client?.client_secret ?? null, registration_access_tokens: tokens };
          return;
        }
        case 'POST /__control/revoke-account-grants': {
          const body = await readJson(ctx);
          if (typeof body.account !== 'string') ctx.throw(400, 'account required');
          const grants = await revokeAccountGrants(provider, body.account);
          ctx.body = { account: body.account, grants_revoked: grants };
          return;
        }
        default:
          ctx.status = 404;
          ctx.body = { error: 'not_found', path };
          return;
      }
    }

    // ------------------------------------------------------------ interaction
    const interactionMatch = /^\/interaction\/([^/]+)\/?$/.exec(path);
    if (interactionMatch && method === 'GET') {
      ctx.set('Cache-Control', 'no-store');
      const details = await provider.interactionDetails(ctx.req, ctx.res);
      const { prompt, params, session } = details;
      let result;
      let merge = false;
      if (state.deny) {
        result = { error: 'access_denied', error_description: 'End-User denied' };
      } else if (prompt.name === 'login') {
        result = { login: { accountId: state.account } };
      } else if (prompt.name === 'consent') {
        const accountId = session?.accountId ?? state.account;
        let grant;
        if (details.grantId) grant = await provider.Grant.find(details.grantId);
        if (!grant) grant = new provider.Grant({ accountId, clientId: params.client_id });
        // Grant everything that was asked for.
        if (typeof params.scope === 'string' && params.scope) grant.addOIDCScope(params.scope);
        const d = prompt.details ?? {};
        if (d.missingOIDCScope) grant.addOIDCScope(d.missingOIDCScope.join(' '));
        if (d.missingOIDCClaims) grant.addOIDCClaims(d.missingOIDCClaims);
        if (d.missingResourceScopes) {
          for (const [indicator, scopes] of Object.entries(d.missingResourceScopes)) {
            grant.addResourceScope(indicator, scopes.join(' '));
          }
        }
        const grantId = await grant.save();
        result = { consent: { grantId } };
        merge = true;
      } else {
        result = { error: 'access_denied', error_description: `unsupported prompt ${prompt.name}` };
      }
      const returnTo = await provider.interactionResult(ctx.req, ctx.res, result, {
        mergeWithLastSubmission: merge,
      });
      ctx.redirect(returnTo);
      ctx.status = 303;
      return;
    }

    // ------------------------------------------------------------ protected API
    if (path === '/api' || path.startsWith('/api/')) {
      state.stats.api += 1;
      await apiHandler(provider, ctx);
      return;
    }

    // ------------------------------------------------------------ token endpoint
    if (path === '/token' && method === 'POST') {
      const form = await preReadForm(ctx);
      const grantType = typeof form.grant_type === 'string' ? form.grant_type : String(form.grant_type ?? '');
      const auth = clientAuthOf(ctx, form);
      const { stats } = state;
      stats.token.total += 1;
      if (grantType in stats.token && grantType !== 'total') stats.token[grantType] += 1;
      stats.token_requests.push({
        grant_type: grantType,
        client_auth: auth.method,
        resource: typeof form.resource === 'string' ? form.resource : null,
      });
      // per token answer: client port and times, the grant, and short tags (hashes) of the
      // refresh token presented and of the tokens issued, so the chaos harness can tie a
      // reused refresh token to the answer that first consumed it (and a kill window)
      const logged = {
        grant_type: grantType, port: ctx.req.socket.remotePort, t0: Date.now(), t1: null, status: null,
      };
      if (grantType === 'refresh_token' && typeof form.refresh_token === 'string') {
        const entry = liveEntry(`RefreshToken:${form.refresh_token}`);
        logged.rt = tokenTag(form.refresh_token);
        logged.grant = entry?.payload?.grantId ?? null;
        logged.reuse = Boolean(entry?.payload?.consumed);
        if (entry?.payload?.consumed) stats.refresh_reuse += 1;
        else if (!entry) stats.refresh_unknown += 1;
      }
      stats.token_log.push(logged);
      ctx.res.once('finish', () => {
        logged.t1 = Date.now();
        logged.status = ctx.status;
      });

      const fault = nextFault('token');
      if (fault?.mode === 'status') {
        answerStatusFault(ctx, fault);
        return;
      }
      if (fault?.mode === 'invalid_grant') {
        ctx.status = 400;
        ctx.set('Cache-Control', 'no-store');
        ctx.body = { error: 'invalid_grant', error_description: fault.error_description ?? 'grant request is invalid' };
        return;
      }
      if (!(await enforceAuthMethod(provider, ctx, auth))) return;

      await next();

      if (
        Object.keys(state.tokenExtras).length
        && ctx.status === 200
        && ctx.body && typeof ctx.body === 'object'
      ) {
        ctx.body = { ...ctx.body, ...state.tokenExtras };
      }
      if (
        state.idTokenDefect
        && ctx.status === 200
        && ctx.body && typeof ctx.body === 'object' && typeof ctx.body.id_token === 'string'
      ) {
        const kind = state.idTokenDefect;
        state.idTokenDefect = null;
        const clientId = auth.clientId ?? decodeJwt(ctx.body.id_token).payload.aud;
        ctx.body = { ...ctx.body, id_token: makeDefectiveIdToken(ctx.body.id_token, kind, clientId) };
      }
      if (ctx.status === 200 && ctx.body && typeof ctx.body === 'object') {
        const { access_token: at, refresh_token: rt } = ctx.body;
        if (typeof at === 'string') {
          logged.at = tokenTag(at);
          logged.grant ??= liveEntry(`AccessToken:${at}`)?.payload?.grantId ?? null;
        }
        if (typeof rt === 'string') logged.new_rt = tokenTag(rt);
      }
      await afterProcessing(ctx, fault);
      return;
    }

    // ------------------------------------------------------------ revocation
    if (path === '/token/revocation' && method === 'POST') {
      const form = await preReadForm(ctx);
      const auth = clientAuthOf(ctx, form);
      state.stats.revocation += 1;
      state.stats.revocation_requests.push({
        token_type_hint: typeof form.token_type_hint === 'string' ? form.token_type_hint : null,
        client_auth: auth.method,
      });
      const fault = nextFault('revocation');
      if (fault?.mode === 'status') {
        answerStatusFault(ctx, fault);
        return;
      }
      if (!(await enforceAuthMethod(provider, ctx, auth))) return;
      await next();
      await afterProcessing(ctx, fault);
      return;
    }

    // ------------------------------------------------------------ discovery, JWKS, userinfo
    const metaTarget = path === '/.well-known/openid-configuration' ? 'discovery'
      : path === '/jwks' ? 'jwks'
        : path === '/me' ? 'userinfo' : null;
    if (metaTarget) {
      state.stats[metaTarget] += 1;
      const fault = nextFault(metaTarget);
      if (fault?.mode === 'status') {
        answerStatusFault(ctx, fault);
        return;
      }
      await next();
      await afterProcessing(ctx, fault);
      return;
    }

    if (path === '/token/introspection' && method === 'POST') state.stats.introspection += 1;

    await next();

    // ------------------------------------------------------------ iss rewrite (RFC 9207)
    if (
      state.issMode
      && method === 'GET'
      && (path === '/auth' || path.startsWith('/auth/'))
      && ctx.status >= 300 && ctx.status < 400
    ) {
      const location = ctx.response.get('Location');
      let url;
      try {
        url = new URL(location, provider.issuer);
      } catch {
        url = undefined;
      }
      const issuerOrigin = new URL(provider.issuer).origin;
      if (
        url && url.origin !== issuerOrigin
        && (url.searchParams.has('code') || url.searchParams.has('error'))
      ) {
        const mode = state.issMode;
        state.issMode = null;
        if (mode === 'missing') url.searchParams.delete('iss');
        else if (mode === 'foreign') url.searchParams.set('iss', 'https://evil.example');
        else if (mode === 'trailing_slash') url.searchParams.set('iss', `${provider.issuer}/`);
        ctx.set('Location', url.href);
      }
    }
  });
}

// ---------------------------------------------------------------- protected API

async function apiHandler(provider, ctx) {
  ctx.set('Cache-Control', 'no-store');
  const token = bearerOf(ctx);
  const realm = 'realm="grantkeeper-test-api"';
  if (!token) {
    ctx.status = 401;
    ctx.set('WWW-Authenticate', `Bearer ${realm}`);
    ctx.body = { error: 'invalid_token', error_description: 'no bearer token' };
    return;
  }
  let at = await provider.AccessToken.find(token);
  let grant = at ? await provider.Grant.find(at.grantId) : undefined;
  if (!at) {
    // a client-credentials token (no user, no grant): the client itself is the account
    const cc = await provider.ClientCredentials.find(token);
    if (cc) {
      at = { accountId: `client:${cc.clientId}`, clientId: cc.clientId, scope: cc.scope };
      grant = true;
    }
  }
  if (!at || !grant) {
    ctx.status = 401;
    ctx.set(
      'WWW-Authenticate',
      `Bearer ${realm}, error="invalid_token", error_description="The access token is invalid or expired"`,
    );
    ctx.body = { error: 'invalid_token', error_description: 'The access token is invalid or expired' };
    return;
  }
  const account = at.accountId;
  const url = new URL(ctx.originalUrl, 'http://placeholder');
  const { path, method } = ctx;

  if (path === '/api/echo' || path.startsWith('/api/echo/')) {
    const raw = await readRaw(ctx.req);
    ctx.body = {
      method,
      path,
      query: queryObject(url.searchParams),
      raw_query: url.search.slice(1),
      headers: Object.fromEntries(Object.entries(ctx.req.headers).map(([k, v]) => [k.toLowerCase(), v])),
      body: raw.toString('utf8'),
      account,
      client_id: at.clientId,
      scope: at.scope,
    };
    return;
  }

  if (method !== 'GET' && method !== 'HEAD') {
    ctx.status = 405;
    ctx.body = { error: 'method_not_allowed' };
    return;
  }

  if (path === '/api/large') {
    const size = Number.parseInt(url.searchParams.get('size') ?? '0', 10);
    if (!Number.isInteger(size) || size < 0) ctx.throw(400, 'bad size');
    const chunk = Buffer.alloc(64 * 1024);
    for (let i = 0; i < chunk.length; i += 1) chunk[i] = i % 256;
    async function* gen() {
      let sent = 0;
      while (sent < size) {
        const n = Math.min(chunk.length, size - sent);
        // chunk.length is a multiple of 256, so byte k of the stream is k % 256.
        yield n === chunk.length ? chunk : chunk.subarray(0, n);
        sent += n;
        await new Promise((resolve) => { setImmediate(resolve); });
      }
    }
    ctx.type = 'application/octet-stream';
    ctx.body = Readable.from(gen());
    return;
  }

  const statusMatch = /^\/api\/status\/(\d{3})$/.exec(path);
  if (statusMatch) {
    const code = Number(statusMatch[1]);
    if (code < 200 || code > 599) ctx.throw(400, 'bad status');
    ctx.status = code;
    if (code === 429) ctx.set('Retry-After', '7');
    if (![204, 205, 304].includes(code)) ctx.body = { status: code, account };
    return;
  }

  if (path === '/api/redirect') {
    const to = url.searchParams.get('to');
    if (!to) ctx.throw(400, 'to required');
    ctx.status = 302;
    ctx.set('Location', to);
    ctx.body = '';
    return;
  }

  if (path === '/api/slow') {
    const ms = Number.parseInt(url.searchParams.get('ms') ?? '1000', 10);
    await sleep(Math.max(0, Math.min(ms, 120_000)));
    ctx.body = { slept_ms: ms, account };
    return;
  }

  if (path === '/api/whoami') {
    ctx.body = { account, client_id: at.clientId, scope: at.scope };
    return;
  }

  ctx.status = 404;
  ctx.body = { error: 'not_found' };
}

// ---------------------------------------------------------------- start

const server = http.createServer();
server.keepAliveTimeout = 5_000;

server.listen(args.port, args.host, () => {
  const { port } = server.address();
  const hostForUrl = args.host.includes(':') ? `[${args.host}]` : args.host;
  const issuer = `http://${hostForUrl}:${port}`;
  const provider = buildProvider(issuer);
  provider.on('server_error', (ctx, err) => {
    process.stderr.write(`server_error ${ctx.method} ${ctx.path}: ${err?.stack ?? err}\n`);
  });
  installRoutes(provider);
  server.on('request', provider.callback());
  process.stdout.write(`READY ${issuer}\n`);
});

if (args.exitOnStdinClose) {
  process.stdin.on('end', () => process.exit(0));
  process.stdin.on('close', () => process.exit(0));
  process.stdin.resume();
}

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close();
    process.exit(0);
  });
}
