// smtp-server exports its connection class at this path but @types/smtp-server does not describe it.
declare module 'smtp-server/lib/smtp-connection.js' {
  export class SMTPConnection {
    send(code: number, data?: string | string[], context?: string | false): void;
  }
}
