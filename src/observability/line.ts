/**
 * One line per log record, for `log.format: line` and the `logs` command: what an admin
 * scans in a terminal or a journal. A transaction becomes its summary (who sent what to whom,
 * what each destination answered, what the client was told); any other record its time,
 * level, message and fields.
 */

type Fields = Record<string, unknown>;

/** The code and enhanced status code (RFC 3463 class.subject.detail) a reply starts with: "550 5.1.1". */
export function replyCode(reply: unknown): string | undefined {
  if (typeof reply !== 'string') return undefined;
  const match = /^([2-5]\d\d)(?:[ -]([245]\.\d{1,3}\.\d{1,3})(?=\s|$))?/.exec(reply);
  return match ? [match[1], match[2]].filter(Boolean).join(' ') : undefined;
}

function object(value: unknown): Fields {
  return value !== null && typeof value === 'object' && !Array.isArray(value) ? (value as Fields) : {};
}

/**
 * What the destination said last for a recipient: its reply to DATA, else to RCPT. Records
 * keep a destination's replies under `destination` ({ rcpt, data }); records written before
 * that kept them beside the client's (`rcpt`, `data`), and files of those are still read.
 */
function destinationReply(recipient: Fields): unknown {
  if (typeof recipient.destination === 'object') return object(recipient.destination).data ?? object(recipient.destination).rcpt;
  return recipient.data ?? recipient.rcpt;
}

/** What the client was answered at the end: the reply's codes, or the stage at which it went away. */
function finalReply(record: Fields): string {
  const code = replyCode(record.reply);
  if (code) return `reply ${code}`;
  const abandoned = object(record.abandoned);
  if (abandoned.stage !== undefined) return `abandoned at ${String(abandoned.stage)}`;
  return `reply ${String(record.outcome ?? '-')}`;
}

/** `2026-… ID 10.0.0.5 user=exchange <alice@…> → <bob@…> delivered 250 2.0.0, <carol@…> refused 550 5.1.1; dmarc=pass; reply 250 2.0.0` */
export function transactionLine(record: Fields): string {
  const client = object(record.client);
  const envelope = object(record.envelope);
  const recipients = Array.isArray(record.recipients) ? record.recipients.map(object) : [];
  const dmarc = object(object(object(record.preflight).prediction).dmarc).result;
  const who = [client.ip ?? '-', client.user !== undefined && `user=${String(client.user)}`].filter(Boolean).join(' ');
  const to = recipients.map((r) => [`<${String(r.address)}>`, r.result, replyCode(destinationReply(r))].filter(Boolean).join(' ')).join(', ');
  return [
    `${String(record.time ?? '-')} ${String(record.id ?? '-')} ${who} <${String(envelope.mailFrom ?? '')}> → ${to || '(no recipient)'}`,
    `dmarc=${typeof dmarc === 'string' ? dmarc : '-'}`,
    finalReply(record),
  ].join('; ');
}

/** A value as `key=value` shows it: bare when it has no space, quote or equals sign, else as JSON. */
function fieldValue(value: unknown): string {
  if (typeof value === 'string') return /^[^\s"=]+$/.test(value) ? value : JSON.stringify(value);
  // An error keeps to one line: its type and message (the stack is in the json and pretty formats).
  const error = object(value);
  if ('message' in error && 'stack' in error) return JSON.stringify(`${String(error.type ?? 'Error')}: ${String(error.message)}`);
  return JSON.stringify(value) ?? String(value);
}

const OWN_COLUMNS = new Set(['time', 'level', 'msg', 'service']);

/** Any record on one line: a transaction's summary, else `time level msg key=value …`. */
export function recordLine(record: Fields): string {
  if (record.msg === 'transaction') return transactionLine(record);
  const fields = Object.entries(record)
    .filter(([key, value]) => !OWN_COLUMNS.has(key) && value !== undefined)
    .map(([key, value]) => `${key}=${fieldValue(value)}`);
  return [record.time ?? '-', record.level ?? '-', record.msg ?? '', ...fields].map(String).join(' ');
}
