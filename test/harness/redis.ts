import { spawn, type ChildProcess } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { freePort } from './world.ts';

/** A redis-server of the test's own on a free loopback port, so a test can also kill it. */
export class RedisServer {
  readonly port: number;
  #child: ChildProcess;

  private constructor(child: ChildProcess, port: number) {
    this.#child = child;
    this.port = port;
  }

  get url(): string {
    return `redis://127.0.0.1:${this.port}/0`;
  }

  static async start(port?: number, extra: string[] = []): Promise<RedisServer> {
    const chosen = port ?? (await freePort());
    return RedisServer.#spawn(['--port', String(chosen), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', ...extra], chosen, 'Ready to accept connections');
  }

  /**
   * One that keeps every write across a crash: AOF in `dir`, fsynced before each reply, so
   * a SIGKILL loses nothing acknowledged. Started again on the same port and `dir`, it has
   * what it had (later arguments override start()'s `--appendonly no`).
   */
  static persistent(dir: string, port?: number): Promise<RedisServer> {
    return RedisServer.start(port, ['--appendonly', 'yes', '--appendfsync', 'always', '--dir', dir]);
  }

  /** A Sentinel watching the master group `name` at `master` (it rewrites its config file, so it gets one of its own). */
  static async sentinel(name: string, master: RedisServer): Promise<RedisServer> {
    const port = await freePort();
    const dir = mkdtempSync(path.join(tmpdir(), 'sentinel-'));
    const file = path.join(dir, 'sentinel.conf');
    writeFileSync(file, `port ${port}\nbind 127.0.0.1\nsentinel monitor ${name} 127.0.0.1 ${master.port} 1\n`);
    const server = await RedisServer.#spawn([file, '--sentinel'], port, 'Sentinel ID');
    server.#child.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    return server;
  }

  /** Three masters on free ports forming one cluster, every slot assigned and the state ok. */
  static async cluster(): Promise<RedisServer[]> {
    const dir = mkdtempSync(path.join(tmpdir(), 'cluster-'));
    const nodes = await Promise.all(
      [0, 1, 2].map((i) => RedisServer.start(undefined, ['--cluster-enabled', 'yes', '--cluster-config-file', path.join(dir, `nodes-${i}.conf`)])),
    );
    nodes[0].#child.once('exit', () => rmSync(dir, { recursive: true, force: true }));
    const create = spawn('redis-cli', ['--cluster', 'create', ...nodes.map((n) => `127.0.0.1:${n.port}`), '--cluster-replicas', '0', '--cluster-yes'], { stdio: 'ignore' });
    const code = await new Promise((resolve) => create.once('exit', resolve));
    if (code !== 0) throw new Error(`redis-cli --cluster create exited with ${code}`);
    // The nodes agree on the slots a moment after the command returns; ask until they say so.
    for (const node of nodes) {
      for (let state = ''; !state.includes('cluster_state:ok'); ) {
        const info = spawn('redis-cli', ['-p', String(node.port), 'cluster', 'info'], { stdio: ['ignore', 'pipe', 'ignore'] });
        state = '';
        info.stdout!.on('data', (chunk) => (state += chunk));
        await new Promise((resolve) => info.once('exit', resolve));
      }
    }
    return nodes;
  }

  static async #spawn(args: string[], port: number, readyLine: string): Promise<RedisServer> {
    const child = spawn('redis-server', args, { stdio: ['ignore', 'pipe', 'pipe'] });
    await new Promise<void>((resolve, reject) => {
      let output = '';
      child.stdout!.on('data', (chunk) => {
        output += chunk;
        if (output.includes(readyLine)) resolve();
      });
      child.once('error', reject);
      child.once('exit', (code) => reject(new Error(`redis-server exited with ${code}: ${output}`)));
    });
    return new RedisServer(child, port);
  }

  /** SIGSTOP: connections stay open and nothing answers, as a server stuck in a long command. */
  pause(): void {
    this.#child.kill('SIGSTOP');
  }

  resume(): void {
    this.#child.kill('SIGCONT');
  }

  /** SIGKILL, as a crash: no goodbye to the clients. */
  async kill(): Promise<void> {
    if (this.#child.exitCode !== null || this.#child.signalCode !== null) return;
    const exited = new Promise((resolve) => this.#child.once('exit', resolve));
    this.#child.kill('SIGKILL');
    await exited;
  }
}
