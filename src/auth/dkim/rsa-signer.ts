import { sign, type KeyObject } from 'node:crypto';
import { isMainThread, parentPort, Worker } from 'node:worker_threads';

/**
 * RSA signatures off the event loop: an RSA-2048 signature is ~0.36 ms of CPU, a third of
 * what the relay spends on a 10 KB message (bench/RESULTS.md, "Where the time goes"), and
 * while it runs no other session is served. One worker thread computes them; the event loop
 * goes on with the other sessions. (Ed25519 costs ~0.05 ms: cheaper in place than a message
 * to a thread and back.) This file is also the worker's code.
 */
interface Request {
  id: number;
  data: Buffer;
  key: KeyObject;
}

type Answer = { id: number; signature: Uint8Array } | { id: number; error: string };

if (!isMainThread && parentPort) {
  const port = parentPort;
  port.on('message', ({ id, data, key }: Request) => {
    try {
      port.postMessage({ id, signature: sign('sha256', data, key) } satisfies Answer);
    } catch (err) {
      port.postMessage({ id, error: (err as Error).message } satisfies Answer);
    }
  });
}

let worker: Worker | undefined;
let next = 0;
const pending = new Map<number, { resolve: (signature: Buffer) => void; reject: (err: Error) => void }>();

function thread(): Worker {
  if (worker) return worker;
  const started = new Worker(new URL(import.meta.url));
  started.on('message', (answer: Answer) => {
    const waiting = pending.get(answer.id);
    pending.delete(answer.id);
    if (pending.size === 0) started.unref();
    if ('error' in answer) waiting?.reject(new Error(answer.error));
    else waiting?.resolve(Buffer.from(answer.signature));
  });
  // A thread that died takes its requests with it: they fail, and the next signature starts another.
  started.on('error', (err) => {
    worker = undefined;
    for (const waiting of pending.values()) waiting.reject(err);
    pending.clear();
  });
  started.unref();
  worker = started;
  return started;
}

/**
 * Starts the signing thread now (a relay with an RSA key, at start): its few MB are part of
 * the relay's standing cost, not of the first message, and that message does not wait for it.
 */
export function startRsaSigner(): void {
  thread();
}

/** RSASSA-PKCS1-v1_5 with SHA-256 of `data` (RFC 8017 §8.2; RFC 6376 §3.3.1), computed by the signing thread. */
export function rsaSign(data: Buffer, key: KeyObject): Promise<Buffer> {
  const id = next++;
  const target = thread();
  return new Promise((resolve, reject) => {
    pending.set(id, { resolve, reject });
    // Waiting for a signature keeps the process up; an idle thread does not.
    target.ref();
    target.postMessage({ id, data, key } satisfies Request);
  });
}
