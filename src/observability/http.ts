import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Logger } from 'pino';
import { exposition, type Exposition } from './metrics.ts';

/**
 * What /readyz answers. Unready (503): the relay cannot take mail as configured (a listener
 * not bound, no usable egress identity, draining). Degraded (200): mail flows, but something
 * it leans on is away (Redis), so the body says so for whoever looks.
 */
export interface Readiness {
  problems: string[];
  degraded: string[];
}

/** What the port answers with: this process's state, or a supervisor's of all its workers. */
export interface HttpSources {
  readiness(): Readiness | Promise<Readiness>;
  metrics?(): Promise<Exposition>;
}

/** The relay's HTTP port (DESIGN §6): /metrics for Prometheus, /healthz and /readyz for the orchestrator. */
export class HttpServer {
  readonly port: number;
  readonly #server: Server;

  private constructor(server: Server) {
    this.#server = server;
    this.port = (server.address() as AddressInfo).port;
  }

  static async listen(settings: { host: string; port: number }, sources: HttpSources, logger: Logger): Promise<HttpServer> {
    const log = logger.child({ component: 'http' });
    const server = createServer((request, response) => {
      void answer(request, response, sources).catch((err: Error) => {
        log.error({ err, path: request.url }, 'HTTP request failed');
        if (!response.headersSent) response.writeHead(500, { 'content-type': 'text/plain' });
        response.end('internal error\n');
      });
    });
    // A scraper keeps its connection open between scrapes; none may hold the relay's exit.
    server.keepAliveTimeout = 5000;
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(settings.port, settings.host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    server.on('error', (err) => log.error({ err }, 'HTTP listener error'));
    const http = new HttpServer(server);
    log.info({ host: settings.host, port: http.port }, 'HTTP listening (/metrics, /healthz, /readyz)');
    return http;
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      this.#server.close(() => resolve());
      this.#server.closeAllConnections();
    });
  }
}

async function answer(request: IncomingMessage, response: ServerResponse, sources: HttpSources): Promise<void> {
  const path = new URL(request.url ?? '/', 'http://relay').pathname;
  if (request.method !== 'GET' && request.method !== 'HEAD') {
    response.writeHead(405, { allow: 'GET, HEAD', 'content-type': 'text/plain' });
    return void response.end('only GET and HEAD\n');
  }
  switch (path) {
    case '/healthz':
      // Alive: the event loop answers. Whether mail can flow is /readyz's question.
      response.writeHead(200, { 'content-type': 'text/plain' });
      return void response.end('ok\n');
    case '/readyz': {
      const { problems, degraded } = await sources.readiness();
      const status = problems.length ? 'unready' : degraded.length ? 'degraded' : 'ready';
      response.writeHead(problems.length ? 503 : 200, { 'content-type': 'application/json' });
      return void response.end(`${JSON.stringify({ status, problems, degraded })}\n`);
    }
    case '/metrics': {
      const { contentType, body } = await (sources.metrics ?? exposition)();
      response.writeHead(200, { 'content-type': contentType });
      return void response.end(body);
    }
    default:
      response.writeHead(404, { 'content-type': 'text/plain' });
      response.end('not found: /metrics, /healthz and /readyz are served here\n');
  }
}
