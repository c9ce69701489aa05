// smtp-server exports its connection class at this path but @types/smtp-server does not describe it.
declare module 'smtp-server/lib/smtp-connection.js' {
  import type { Socket } from 'node:net';
  import type { Writable } from 'node:stream';
  import type { SMTPServer } from 'smtp-server';
  export class SMTPConnection {
    _server: SMTPServer;
    _socket: Socket;
    id: string;
    remoteAddress: string;
    session?: { envelope?: { mailFrom?: unknown } };
    _handlerPending?: boolean;
    _dataStream?: unknown;
    _nextHandler?: unknown;
    _upgrading?: boolean;
    _closing?: boolean;
    _closed?: boolean;
    _parser?: { _dataMode?: boolean } | false;
    _onClose(): void;
    needsUpgrade?: boolean;
    init(): void;
    connectionReady(next?: () => void): void;
    send(code: number, data?: string | string[], context?: string | false): void;
    _onCommand(command: Buffer, callback?: () => void): void;
    _createParser(): Writable;
    close(): void;
  }
}
