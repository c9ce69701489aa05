import { RawClient, type ClientReply } from './client.ts';

export interface Sent {
  mail: ClientReply;
  rcpts: ClientReply[];
  /** The final reply to DATA, absent when no recipient was accepted or DATA was refused. */
  data?: ClientReply;
}

/** One transaction from an internal server at 127.0.0.1, each reply kept. */
export async function send(port: number, from: string, to: string[], body: string | Buffer, options: { localAddress?: string } = {}): Promise<Sent> {
  const { client } = await RawClient.connect(port, options);
  try {
    await client.command('EHLO corp-ex01.example.test');
    const mail = await client.command(`MAIL FROM:<${from}>`);
    const rcpts: ClientReply[] = [];
    if (mail.code !== 250) return { mail, rcpts };
    for (const recipient of to) rcpts.push(await client.command(`RCPT TO:<${recipient}>`));
    if (!rcpts.some((r) => r.code === 250)) return { mail, rcpts };
    const { final } = await client.data(body);
    return { mail, rcpts, data: final };
  } finally {
    await client.quit();
  }
}
