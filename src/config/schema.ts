import { getServers } from 'node:dns';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import { z } from 'zod';
import { canonicalAddress } from '../ip/index.ts';

/** "30s", "5m", "1h", "5d", "250ms", or a number of seconds: always read as milliseconds. */
const duration = z.union([z.number().nonnegative(), z.string()]).transform((value, ctx) => {
  if (typeof value === 'number') return value * 1000;
  const match = /^(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)$/.exec(value.trim());
  if (!match) {
    ctx.addIssue({ code: 'custom', message: `"${value}" is not a duration (use e.g. 30s, 5m, 1h, 5d)` });
    return z.NEVER;
  }
  const unit = { ms: 1, s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000 }[match[2] as 'ms' | 's' | 'm' | 'h' | 'd'];
  return Math.round(Number(match[1]) * unit);
});

/** "25MB", "512KB", "1GB" (powers of 1024) or a number of bytes. */
const size = z.union([z.number().int().positive(), z.string()]).transform((value, ctx) => {
  if (typeof value === 'number') return value;
  const match = /^(\d+(?:\.\d+)?)\s*(B|KB|MB|GB)$/i.exec(value.trim());
  if (!match) {
    ctx.addIssue({ code: 'custom', message: `"${value}" is not a size (use e.g. 512KB, 25MB)` });
    return z.NEVER;
  }
  const unit = { B: 1, KB: 1024, MB: 1024 ** 2, GB: 1024 ** 3 }[match[2].toUpperCase() as 'B' | 'KB' | 'MB' | 'GB'];
  return Math.floor(Number(match[1]) * unit);
});

/** An address in the relay's one form: an IPv4-mapped IPv6 address is its IPv4 address (RFC 4291 §2.5.5.2). */
const ip = z.string().transform((value, ctx) => {
  const address = canonicalAddress(value);
  if (address === undefined) {
    ctx.addIssue({ code: 'custom', message: 'must be an IPv4 or IPv6 address' });
    return z.NEVER;
  }
  return address;
});

const cidr = z.string().refine(
  (value) => {
    const [address, bits, ...rest] = value.split('/');
    if (rest.length || !net.isIP(address)) return false;
    if (bits === undefined) return true;
    const max = net.isIPv4(address) ? 32 : 128;
    return /^\d+$/.test(bits) && Number(bits) <= max;
  },
  { message: 'must be an address or CIDR network such as 10.0.0.0/8' },
);

const hostname = z
  .string()
  .regex(/^(?=.{1,253}$)([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*\.?$/i, 'must be a host name');

const domain = hostname.transform((value) => value.toLowerCase().replace(/\.$/, ''));

const port = z.number().int().min(1).max(65535);

/** `host`, `host:port`, `[v6]` or `[v6]:port`, as node's `setServers` takes them. */
function parseServer(text: string): { host: string; port: number } | undefined {
  const bracketed = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(text);
  // In canonical form, the one replies are compared against (and a mapped IPv4 server is asked over IPv4).
  if (bracketed) return net.isIPv6(bracketed[1]) ? { host: canonicalAddress(bracketed[1])!, port: Number(bracketed[2] ?? 53) } : undefined;
  if (net.isIPv6(text)) return { host: canonicalAddress(text)!, port: 53 };
  const [host, port, extra] = text.split(':');
  if (extra !== undefined || !net.isIPv4(host) || (port !== undefined && !/^\d{1,5}$/.test(port))) return undefined;
  return { host, port: Number(port ?? 53) };
}

/** A DNS server: an IP address with an optional port, as `1.1.1.1:53` or `[2001:db8::1]:53`. */
const nameServer = z.string().transform((value, ctx) => {
  const server = parseServer(value);
  if (!server || server.port < 1 || server.port > 65535) {
    ctx.addIssue({ code: 'custom', message: `"${value}" is not an IP address with an optional port` });
    return z.NEVER;
  }
  return server;
});

/** `host:port`, as ioredis takes Sentinel and Cluster nodes. */
const redisNode = z.string().transform((value, ctx) => {
  const match = /^(\[[0-9a-f:.]+\]|[^\s:[\]]+):(\d{1,5})$/i.exec(value);
  if (!match || Number(match[2]) > 65535) {
    ctx.addIssue({ code: 'custom', message: `"${value}" is not host:port` });
    return z.NEVER;
  }
  return { host: match[1].replace(/^\[|\]$/g, ''), port: Number(match[2]) };
});

/** A URL, or a Sentinel group, or Cluster seed nodes. */
const redisSettings = z.union(
  [
    z.string().regex(/^rediss?:\/\//, 'must be a redis:// or rediss:// URL'),
    z.strictObject({
      sentinels: z.array(redisNode).min(1),
      /** The master group name the sentinels monitor. */
      name: z.string().min(1),
      password: z.string().optional(),
      sentinelPassword: z.string().optional(),
      db: z.number().int().min(0).optional(),
      tls: z.boolean().default(false),
    }),
    z.strictObject({
      cluster: z.array(redisNode).min(1),
      password: z.string().optional(),
      tls: z.boolean().default(false),
    }),
  ],
  { error: 'must be a redis:// URL, {sentinels: [host:port…], name}, or {cluster: [host:port…]}' },
);

const listener = z.strictObject({
  host: z.string().default('0.0.0.0'),
  /** 0 picks a free port (tests). */
  port: z.number().int().min(0).max(65535).default(2525),
  /** Offer STARTTLS (needs `tls`). */
  starttls: z.boolean().default(false),
  /** TLS from the first byte (port 465 style, RFC 8314). */
  implicitTls: z.boolean().default(false),
  /**
   * Addresses of the load balancers that send a HAProxy PROXY header (v1/v2), so client
   * networks see real client addresses. Empty: no PROXY protocol.
   */
  proxyProtocol: z.array(ip).default([]),
  /** Allow AUTH before TLS on this listener (only for trusted segments). */
  allowInsecureAuth: z.boolean().default(false),
});

const user = z.strictObject({
  name: z.string().min(1),
  password: z.string().regex(/^scrypt\$N=\d+,r=\d+,p=\d+\$[A-Za-z0-9+/=]+\$[A-Za-z0-9+/=]+$/, 'must be a hash printed by `hygiene-relay passwd` (scrypt$N=…)'),
  senderDomains: z.array(domain).optional(),
});

const egress = z.strictObject({
  /** The public address receivers see; SPF must authorize it, its PTR names the HELO. */
  ip,
  /** The local address to bind when it differs from the public one (behind 1:1 NAT). */
  bind: ip.optional(),
  /** `auto`: the PTR of `ip`, accepted only when it resolves back to `ip`. */
  helo: z.union([z.literal('auto'), hostname]).default('auto'),
});

/** Recipient domains: `*` (every domain), `*.example.com` (its subdomains), or `example.com`. */
const domainPattern = z
  .string()
  .refine((value) => value === '*' || hostname.safeParse(value.replace(/^\*\./, '')).success, { message: 'must be a domain, *.domain or *' })
  .transform((value) => value.toLowerCase().replace(/\.$/, ''));

const routeAuth = z
  .strictObject({
    user: z.string().min(1),
    /** The password itself, or */
    password: z.string().min(1).optional(),
    /** a file holding it (a mounted secret); read at start and on reload, one trailing newline dropped. */
    passwordFile: z.string().min(1).optional(),
    /** Send the credentials even when the smarthost offers no TLS. */
    allowCleartext: z.boolean().default(false),
  })
  .transform((auth, ctx) => {
    if ((auth.password === undefined) === (auth.passwordFile === undefined)) {
      ctx.addIssue({ code: 'custom', message: 'give exactly one of password and passwordFile' });
      return z.NEVER;
    }
    let password = auth.password;
    if (auth.passwordFile !== undefined) {
      try {
        password = readFileSync(auth.passwordFile, 'utf8').replace(/\r?\n$/, '');
      } catch (err) {
        ctx.addIssue({ code: 'custom', path: ['passwordFile'], message: `cannot read ${auth.passwordFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}` });
        return z.NEVER;
      }
      if (!password) {
        ctx.addIssue({ code: 'custom', path: ['passwordFile'], message: `${auth.passwordFile} is empty` });
        return z.NEVER;
      }
    }
    return { user: auth.user, password: password!, allowCleartext: auth.allowCleartext };
  });

const route = z.strictObject({
  domains: z.array(domainPattern).min(1),
  host: z.string().min(1),
  port: port.default(25),
  /** `required`: STARTTLS with a certificate valid for `host`, else 451 4.7.5 and nothing is sent. */
  tls: z.enum(['opportunistic', 'required']).default('opportunistic'),
  /** AUTH (PLAIN or LOGIN, as the host offers) before MAIL FROM: an ISP smarthost. */
  auth: routeAuth.optional(),
});

/** What a receiver demands of a message before it takes it (src/delivery/providers.yaml). */
const requirements = z.strictObject({
  /** The SPF (RFC 7208) and DKIM (RFC 6376) results it wants: one of them passing, or both. */
  authentication: z.enum(['spf-or-dkim', 'spf-and-dkim']).optional(),
  /**
   * policy: a DMARC failure is refused when the From domain's policy says quarantine or
   * reject (RFC 7489 §6.3); published: the domain must publish a record; aligned: the record
   * must exist and DMARC pass (SPF or DKIM aligned with From).
   */
  dmarc: z.enum(['policy', 'published', 'aligned']).optional(),
  /** link: a List-Unsubscribe field (RFC 2369); one-click: an https one with List-Unsubscribe-Post (RFC 8058). */
  unsubscribe: z.enum(['link', 'one-click']).optional(),
  /** The egress PTR forward-confirms (FCrDNS) and names the HELO. */
  ptr: z.boolean().optional(),
  /** The session to it uses TLS. */
  tls: z.boolean().optional(),
});

/** A provider's profile: what it demands of every sender, and of bulk senders. */
export const profileSchema = z.strictObject({ all: requirements, bulk: requirements });

/**
 * A provider of the registry (src/delivery/providers.yaml) as a whole; in the config,
 * `delivery.providers` gives only the keys that change (providerOverride).
 */
export const providerSchema = z.strictObject({
  /** MX host name suffixes: `google.com` matches `aspmx.l.google.com`. */
  mx: z.array(domain).min(1),
  maxSessions: z.number().int().min(1).default(10),
  messagesPerMinute: z.number().int().min(1).default(600),
  /** How long to stop after the provider says to slow down (Gmail: at least 10 minutes). */
  backoff: duration.prefault('10m'),
  /** What it demands of a message; the `default` profile when absent. */
  requires: profileSchema.optional(),
});

const providerOverride = z.strictObject({
  mx: z.array(domain).min(1).optional(),
  maxSessions: z.number().int().min(1).optional(),
  messagesPerMinute: z.number().int().min(1).optional(),
  backoff: duration.optional(),
  /** `all` and `bulk` given here replace the shipped ones, each as a whole. */
  requires: z.strictObject({ all: requirements.optional(), bulk: requirements.optional() }).optional(),
});

const selector = z
  .string()
  .regex(/^[a-z0-9]([a-z0-9_-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9_-]*[a-z0-9])?)*$/i, 'must be a DKIM selector (letters, digits, hyphens, dots)');

const dkimKey = z.strictObject({
  selector,
  /** A PEM file path, or the PEM itself (for keys mounted as secrets into the config). */
  key: z.string().min(1),
  /** Checked against the key's type; taken from the key when absent. */
  algorithm: z.enum(['rsa-sha256', 'ed25519-sha256']).optional(),
  /** Loaded and checked, not used to sign: the next key of a rotation. */
  standby: z.boolean().default(false),
});

const check = z.enum(['spf', 'dkim', 'dmarc']);
const policyMode = z.enum(['enforce', 'monitor']);

const sendingDomain = z.strictObject({
  /** enforce: refuse what would fail at the receiver; monitor: relay it and log the failure. Default: defaultPolicy. */
  policy: policyMode.optional(),
  /** What must pass at the receiver. Default: defaultRequire. */
  require: z.array(check).min(1).optional(),
  dkim: z.array(dkimKey).default([]),
  /** The keys also sign mail whose From is a subdomain (d= stays this domain). */
  subdomains: z.boolean().default(false),
  /**
   * Bulk mail, judged by the providers' bulk rules: true for everything the domain sends, or
   * the addresses that send it (MAIL FROM or From). Mail with List-Id, List-Unsubscribe or
   * Precedence: bulk/list is bulk anyway.
   */
  bulk: z.union([z.boolean(), z.array(z.string().regex(/^[^@\s]+@[^@\s]+$/, 'must be an address (user@domain)'))]).optional(),
});

/** Recipients (or messages) per window; false: that window is not limited. */
const perWindow = z.union([z.number().int().positive(), z.literal(false)]);

// A busy office user sends a few dozen messages a day and now and then one to a hundred
// recipients; a phished account sends thousands an hour. A client address is usually the
// internal server sending for everyone, hence ten times as much (README, "Outbound rate limits").
// Messages are limited apart from recipients: a person does not write a message a second,
// a script sending one message per recipient does.
const windows = (recipients: [number, number, number], messages: [number, number, number]) =>
  z.strictObject({
    perMinute: perWindow.default(recipients[0]),
    perHour: perWindow.default(recipients[1]),
    perDay: perWindow.default(recipients[2]),
    messages: z
      .strictObject({ perMinute: perWindow.default(messages[0]), perHour: perWindow.default(messages[1]), perDay: perWindow.default(messages[2]) })
      .prefault({}),
  });
const sendingLimits = windows([150, 500, 2000], [60, 300, 1000]);
const addressLimits = windows([1500, 5000, 20000], [600, 3000, 10000]);

const overrideWindows = {
  perMinute: perWindow.optional(),
  perHour: perWindow.optional(),
  perDay: perWindow.optional(),
  messages: z.strictObject({ perMinute: perWindow.optional(), perHour: perWindow.optional(), perDay: perWindow.optional() }).optional(),
};

const sendingOverride = z.union(
  [
    z.strictObject({ user: z.string().min(1), ...overrideWindows }),
    /** A client address or CIDR network. */
    z.strictObject({ address: cidr, ...overrideWindows }),
    /** The envelope sender's domain (subdomains are not included). */
    z.strictObject({ domain, ...overrideWindows }),
  ],
  { error: 'must name exactly one of user, address (an address or CIDR network) or domain, with perMinute, perHour and/or perDay' },
);

export const configSchema = z.strictObject({
  listeners: z.array(listener).min(1).prefault([{}]),
  tls: z.strictObject({ cert: z.string().min(1), key: z.string().min(1) }).optional(),
  limits: z
    .strictObject({
      maxMessageSize: size.default(50 * 1024 * 1024),
      maxRecipients: z.number().int().positive().default(100),
      /** Connections per listener from trusted networks and authenticated clients: never taken by strangers. */
      maxClients: z.number().int().positive().default(200),
      /** Idle time allowed, and the time a whole command line may take: a client trickling bytes does not extend it. */
      clientTimeout: duration.prefault('5m'),
      /** No session lasts longer, however busy (a trickled DATA included). */
      maxSessionTime: duration.prefault('1h'),
      /** Connections from outside clients.networks, until they authenticate: a budget of their own, per listener. */
      strangers: z
        .strictObject({
          total: z.number().int().min(0).default(20),
          perAddress: z.number().int().min(0).default(2),
          /** A stranger has this long to authenticate; without users configured it has nothing to do here at all. */
          sessionTime: duration.prefault('1m'),
        })
        .prefault({}),
      /** Failed AUTH attempts, counted across connections per client address and per user name within `window`. */
      authFailures: z
        .strictObject({
          perAddress: z.number().int().positive().default(10),
          perUser: z.number().int().positive().default(10),
          window: duration.prefault('15m'),
          /** Over a limit: every AUTH from that address, or for that user, is answered 454 4.7.0 this long. */
          block: duration.prefault('15m'),
        })
        .prefault({}),
      /** AUTH failure counts and the sending limits (abuse), shared by every replica; per process when absent. */
      redis: redisSettings.optional(),
    })
    .prefault({}),
  clients: z
    .strictObject({
      /** An address or CIDR network, or one limited to sender domains: { network, senderDomains }. */
      networks: z
        .array(z.union([cidr, z.strictObject({ network: cidr, senderDomains: z.array(domain).min(1) })]))
        .default([])
        .transform((entries) => entries.map((entry) => (typeof entry === 'string' ? { network: entry, senderDomains: undefined } : entry))),
      users: z.array(user).default([]),
    })
    .prefault({}),
  /**
   * Outbound abuse guard (src/abuse/): recipients and messages each sender may send per
   * minute, hour and day, counted per authenticated user, per client address and per
   * envelope sender of a client without AUTH; holds, the anomaly rule.
   */
  abuse: z
    .strictObject({
      /** What each authenticated user, and each envelope sender of a client without AUTH, may send unless an override says otherwise. */
      limits: sendingLimits.prefault({}),
      /** What each client address may send: an internal server's carries everyone's mail. */
      addressLimits: addressLimits.prefault({}),
      /** The first matching entry of each kind (user, address, domain) replaces the windows it names. */
      overrides: z.array(sendingOverride).default([]),
      /**
       * Hold a sender that goes over a limit, is anomalous or is refused as spam by two
       * providers: every recipient is refused 550 5.7.1 until `hygiene-relay abuse release`.
       */
      hold: z.boolean().default(false),
      /**
       * A sender whose last hour is over `factor` times the median of its active hours in
       * the week before, and over the floor, is flagged (README, "Anomalies"); false: no rule.
       */
      anomaly: z
        .union([
          z.literal(false),
          z.strictObject({
            factor: z.number().min(1).default(10),
            minRecipients: z.number().int().positive().default(200),
            minDomains: z.number().int().positive().default(50),
          }),
        ])
        .prefault({}),
    })
    .prefault({}),
  egress: z.array(egress).min(1),
  strict: z.boolean().default(false),
  identityRecheck: duration.prefault('15m'),
  dns: z
    .strictObject({
      /** The system's resolvers (resolv.conf) when absent. */
      servers: z.array(nameServer).min(1).prefault(() => getServers()),
      timeout: duration.prefault('5s'),
      tries: z.number().int().min(1).max(10).default(2),
      cache: z
        .strictObject({
          /** Bounds on how long an answer is kept, whatever its TTL says. */
          minTtl: duration.prefault('30s'),
          maxTtl: duration.prefault('1h'),
          /** NXDOMAIN/NODATA: at most this long (less when the zone's SOA says less). */
          negativeTtl: duration.prefault('5m'),
          maxEntries: z.number().int().positive().default(10_000),
          /** Shared by every replica; the in-process cache alone when absent. */
          redis: redisSettings.optional(),
          /** How long a Redis command may take before the lookup goes to DNS instead. */
          redisTimeout: duration.prefault('250ms'),
        })
        .prefault({})
        .refine((cache) => cache.minTtl <= cache.maxTtl, { message: 'minTtl must not exceed maxTtl' }),
    })
    .prefault({}),
  delivery: z
    .strictObject({
      port: port.default(25),
      connectTimeout: duration.prefault('30s'),
      commandTimeout: duration.prefault('5m'),
      dataTimeout: duration.prefault('10m'),
      tls: z
        .strictObject({
          /** Recipient domains whose mail goes only over STARTTLS with a certificate valid for the MX name. */
          required: z.array(domainPattern).default([]),
        })
        .prefault({}),
      /** Honour the MTA-STS policies (RFC 8461) that recipient domains publish. */
      mtaSts: z.boolean().default(true),
      routes: z.array(route).default([]),
      /** Upstream sessions kept open between transactions, per destination and egress. */
      pool: z
        .strictObject({
          maxIdle: z.number().int().min(0).default(2),
          idleTimeout: duration.prefault('30s'),
        })
        .prefault({}),
      /** Changes to the shipped provider registry, by name: the keys given replace the shipped ones; a new name needs `mx`. */
      providers: z.record(z.string().regex(/^[a-z0-9][a-z0-9_-]*$/, 'must be a short lower-case name'), providerOverride).default({}),
      /** Per-provider limits and pauses; false: none (providers are still recognised for the playbook). */
      shaping: z.boolean().default(true),
      /** An admin's playbook rows (YAML, `rules:` as in src/delivery/playbook.yaml): added before the shipped ones, or replacing a shipped row of the same id. */
      playbook: z.string().min(1).optional(),
      /** Shaping state shared by every replica (session slots, rates, pauses); per process when absent. */
      redis: redisSettings.optional(),
      bounceRoute: z.strictObject({ host: z.string().min(1), port: port.default(25) }).optional(),
      spool: z
        .strictObject({ memoryLimit: size.default(1024 * 1024), dir: z.string().optional() })
        .prefault({}),
    })
    .prefault({}),
  /** Policy for sending domains not listed under `domains` (and listed ones without their own). */
  defaultPolicy: policyMode.default('enforce'),
  defaultRequire: z.array(check).min(1).default(['dmarc']),
  hygiene: z
    .strictObject({
      /** Remove the Received fields the internal servers added before the message reached the relay. */
      removeReceived: z.boolean().default(false),
      /**
       * Consumer mailbox providers' domains a From may not name unless the relay has a DKIM key
       * for it, added to the shipped list (proxy/consumer-domains.yaml).
       */
      consumerDomains: z.array(domain).default([]),
    })
    .prefault({}),
  /** Sending domains, keyed by domain name: DKIM keys and authentication policy. */
  domains: z
    .record(z.string(), sendingDomain)
    .default({})
    .transform((domains) => Object.fromEntries(Object.entries(domains).map(([name, settings]) => [name.toLowerCase().replace(/\.$/, ''), settings]))),
  memo: z
    .strictObject({
      redis: redisSettings.optional(),
      /**
       * The local store (SQLite) used without `redis`: kept across restarts and shared by the
       * relays of one host. Absent: /var/lib/hygiene-relay/memo.sqlite (see memo.ts). Absolute,
       * because a service's working directory is no place to keep state (systemd starts it in /).
       */
      path: z.string().regex(/^\//, 'must be an absolute path').optional(),
      ttl: duration.prefault('5d'),
      maxEntries: z.number().int().positive().default(100_000),
    })
    .prefault({}),
  log: z
    .strictObject({
      level: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
      /** json: one JSON record a line (what `hygiene-relay logs` reads); pretty: multi-line, for a terminal; line: one summary line a record. */
      format: z.enum(['json', 'pretty', 'line']).default('json'),
    })
    .prefault({}),
  /** Prometheus metrics (/metrics) and the probes (/healthz, /readyz), off the SMTP ports; null: no HTTP port. */
  http: z
    .strictObject({ host: z.string().min(1).default('0.0.0.0'), port: z.number().int().min(0).max(65535).default(9090) })
    .nullable()
    .prefault({}),
  /** SIGTERM: how long transactions in flight may take to finish before the relay exits anyway. */
  shutdownTimeout: duration.prefault('30s'),
  /** Relay processes sharing the listeners under one supervisor (src/supervisor/); auto: one per core. */
  workers: z.union([z.literal('auto'), z.number().int().min(1).max(256)]).default(1),
  /** What `hygiene-relay doctor` (and the same checks at start-up and on SIGHUP) looks at. */
  doctor: z
    .strictObject({
      /**
       * DNS blocklist zones the egress addresses are looked up in; each answer's meaning comes
       * from src/doctor/blocklists.yaml when the zone is listed there.
       */
      blocklists: z.array(domain).default(['zen.spamhaus.org', 'b.barracudacentral.org', 'bl.spamcop.net']),
    })
    .prefault({}),
  /** What `hygiene-relay dns flush` talks to: a Unix socket (mode 0600) in the running relay; null: none. */
  control: z
    .strictObject({ socket: z.string().min(1).nullable().default('/run/hygiene-relay/control.sock') })
    .prefault({}),
});

/** Checks that need more than one key at a time. */
export const relayConfigSchema = configSchema.superRefine((config, ctx) => {
  config.listeners.forEach((listener, index) => {
    if ((listener.starttls || listener.implicitTls) && !config.tls) {
      ctx.addIssue({ code: 'custom', path: ['listeners', index], message: 'uses TLS but no tls.cert/tls.key is configured' });
    }
    if (listener.starttls && listener.implicitTls) {
      ctx.addIssue({ code: 'custom', path: ['listeners', index], message: 'starttls and implicitTls exclude each other' });
    }
  });
  for (const [name, settings] of Object.entries(config.domains)) {
    if (!hostname.safeParse(name).success) ctx.addIssue({ code: 'custom', path: ['domains', name], message: 'must be a domain name' });
    const selectors = new Set<string>();
    settings.dkim.forEach((key, index) => {
      if (selectors.has(key.selector)) ctx.addIssue({ code: 'custom', path: ['domains', name, 'dkim', index, 'selector'], message: `duplicate selector "${key.selector}"` });
      selectors.add(key.selector);
    });
  }
  const names = new Set<string>();
  config.clients.users.forEach((user, index) => {
    if (names.has(user.name)) ctx.addIssue({ code: 'custom', path: ['clients', 'users', index, 'name'], message: `duplicate user "${user.name}"` });
    names.add(user.name);
  });
});

export type Config = z.output<typeof relayConfigSchema>;
export type ListenerConfig = Config['listeners'][number];
export type EgressConfig = Config['egress'][number];
export type RouteConfig = Config['delivery']['routes'][number];
export type ClientUser = Config['clients']['users'][number];
export type AbuseConfig = Config['abuse'];
export type RedisSettings = NonNullable<Config['memo']['redis']>;
export type Profile = z.output<typeof profileSchema>;
export type Requirements = Profile['all'];
