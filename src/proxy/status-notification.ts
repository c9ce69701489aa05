import { connectDestination, resolveDestination, routeDestination } from '../delivery/index.ts';
import type { Egress } from '../identity/index.ts';
import { enhancedOf, formatReply, type Reply } from '../smtp/index.ts';
import type { HeaderSection } from '../message/index.ts';
import { rfc5322Date } from './headers.ts';
import type { RelayContext } from './context.ts';

/** A recipient a destination refused for good after the client had been told nothing yet. */
export interface Refusal {
  address: string;
  reply: Reply;
  remoteMta: string;
}

export interface NotificationInput {
  id: string;
  sender: string;
  refusals: Refusal[];
  /** The original message's header section (RFC 6522 §3: returned as text/rfc822-headers). */
  header: HeaderSection;
  arrival: Date;
}

/**
 * RFC 3464 delivery status notification: multipart/report with a human part, the
 * machine-readable message/delivery-status, and the original headers (RFC 6522).
 */
/** Destination text goes into 7-bit report fields: nothing that could end a line or leave ASCII. */
function printable(text: string): string {
  return text.replace(/[^\x20-\x7e]/g, '?');
}

export async function composeStatusNotification(input: NotificationInput, reportingMta: string): Promise<Buffer> {
  // Imported when the first notification is composed: nodemailer's MIME builder and its
  // encoders hold ~4 MB of heap, and most relays never send one (bench/RESULTS.md, "Memory").
  const { default: MimeNode } = await import('nodemailer/lib/mime-node');
  const report = new MimeNode('multipart/report; report-type=delivery-status');
  report.setHeader({
    From: `Mail Delivery System <MAILER-DAEMON@${reportingMta}>`,
    To: `<${input.sender}>`,
    Subject: 'Undelivered Mail Returned to Sender',
    Date: rfc5322Date(),
    'Message-ID': `<${input.id}.dsn@${reportingMta}>`,
    // RFC 3834: an automatic reply; autoresponders must not answer it.
    'Auto-Submitted': 'auto-replied',
  });
  const human = [
    `This is the mail relay at ${reportingMta}.`,
    '',
    'Your message could not be delivered to the recipients below: it was refused permanently,',
    'by their mail servers or by this relay for them. It was delivered to the other recipients.',
    'Relay transaction id: ' + input.id,
    '',
    ...input.refusals.map((r) => `<${r.address}>: ${r.remoteMta} said: ${printable(formatReply(r.reply))}`),
    '',
  ].join('\r\n');
  report.createChild('text/plain; charset=utf-8').setContent(human);

  const perMessage = [`Reporting-MTA: dns; ${reportingMta}`, `X-Hygiene-Relay-Id: ${input.id}`, `Arrival-Date: ${rfc5322Date(input.arrival)}`];
  const perRecipient = input.refusals.map((r) =>
    [
      `Final-Recipient: rfc822; ${r.address}`,
      'Action: failed',
      `Status: ${enhancedOf(r.reply)}`,
      `Remote-MTA: dns; ${r.remoteMta.split(' ')[0]}`,
      `Diagnostic-Code: smtp; ${printable(formatReply(r.reply))}`,
    ].join('\r\n'),
  );
  report
    .createChild('message/delivery-status')
    .setHeader('Content-Transfer-Encoding', '7bit')
    .setContent([perMessage.join('\r\n'), ...perRecipient].join('\r\n\r\n') + '\r\n');
  report
    .createChild('text/rfc822-headers')
    .setHeader('Content-Transfer-Encoding', '7bit')
    // 7bit by RFC 6522 §3: 8-bit header bytes cannot travel in it, so they are masked.
    .setContent(
      input.header.text
        .split(/\r?\n/)
        .map((line) => line.replace(/[^\x09\x20-\x7e]/g, '?'))
        .join('\r\n') + '\r\n',
    );
  return report.build();
}

/**
 * Sends the notification from the null sender (RFC 5321 §4.5.5) to the envelope sender,
 * through the configured bounce route or the sender's own MX. True only when a destination
 * accepted it: otherwise the refusals count as temporary and the client retries.
 */
export async function sendStatusNotification(ctx: RelayContext, egress: Egress, input: NotificationInput): Promise<boolean> {
  const logger = ctx.logger.child({ id: input.id, component: 'status-notification' });
  const bounceRoute = ctx.config.delivery.bounceRoute;
  const destination = bounceRoute
    ? routeDestination(bounceRoute, `bounce route (${bounceRoute.host}:${bounceRoute.port})`)
    : await resolveDestination(input.sender.slice(input.sender.lastIndexOf('@') + 1).toLowerCase(), ctx.config.delivery, ctx.resolve, { mtaSts: ctx.mtaSts });
  if ('kind' in destination) {
    logger.warn({ sender: input.sender }, 'status notification not sent: no route to the sender');
    return false;
  }
  const connected = await connectDestination(destination, egress, { delivery: ctx.config.delivery, resolve: ctx.resolve, tls: ctx.upstreamTls });
  if ('kind' in connected) {
    logger.warn({ sender: input.sender, reply: formatReply(connected.reply) }, 'status notification not sent');
    return false;
  }
  const { session } = connected;
  try {
    const message = await composeStatusNotification(input, egress.helo);
    const steps = [() => session.mailFrom(''), () => session.rcptTo(input.sender), () => session.data([message])];
    for (const step of steps) {
      const reply = await step();
      if (reply.code >= 300 && reply.code !== 354) {
        logger.warn({ sender: input.sender, mxHost: connected.mxHost, reply: formatReply(reply) }, 'status notification refused');
        return false;
      }
    }
    logger.info({ sender: input.sender, mxHost: connected.mxHost, recipients: input.refusals.map((r) => r.address) }, 'status notification sent');
    return true;
  } catch (err) {
    logger.warn({ err, sender: input.sender }, 'status notification not sent');
    return false;
  } finally {
    await session.quit();
  }
}
