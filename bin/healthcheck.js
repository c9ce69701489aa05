// The image's HEALTHCHECK (Dockerfile): /healthz on the relay's HTTP port; where nothing
// listens there (a config with `http: null`), the SMTP greeting instead: a 220 says the relay
// is alive as surely (RFC 5321 §3.1). Exit 0 healthy, 1 not. Plain JavaScript: it runs once
// every interval, and needs nothing of the relay's code.
import net from 'node:net';

const healthz = process.env.HYGIENE_RELAY_HEALTHZ ?? 'http://127.0.0.1:9090/healthz';
const [host, port] = (process.env.HYGIENE_RELAY_SMTP ?? '127.0.0.1:2525').split(':');

try {
  const response = await fetch(healthz, { signal: AbortSignal.timeout(4000) });
  process.exit(response.ok ? 0 : 1);
} catch (err) {
  // Refused: no HTTP port; anything else (a timeout, a reset) is a relay not answering.
  if (err?.cause?.code !== 'ECONNREFUSED') process.exit(1);
}

const socket = net.connect(Number(port), host);
socket.setTimeout(4000, () => process.exit(1));
socket.once('error', () => process.exit(1));
socket.once('data', (greeting) => {
  socket.destroy();
  process.exit(greeting.toString('latin1').startsWith('220') ? 0 : 1);
});
