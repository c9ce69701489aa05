import { DkimKeyError } from '../auth/index.ts';
import { ConfigError, loadConfig } from '../config/index.ts';
import { ControlServer } from '../control/index.ts';
import { PlaybookError } from '../delivery/index.ts';
import { logReport } from '../doctor/index.ts';
import { IdentityError } from '../identity/index.ts';
import { createLogger } from '../observability/index.ts';
import { startRelay } from '../relay.ts';
import { CONFIG_HELP, configArg, fail, HELP_HELP, readConfig, type Command } from './common.ts';
import { flushAnswer } from './dns.ts';

const START: Command = {
  name: 'start',
  usage: `usage: hygiene-relay start [--config FILE]

Runs the relay until SIGTERM or SIGINT; SIGHUP reloads the configuration
(check it first: hygiene-relay config check).

options:
${CONFIG_HELP}
${HELP_HELP}
`,
};

/** `start`: runs the relay until SIGTERM/SIGINT; SIGHUP reloads the configuration. */
export async function start(args: string[]): Promise<void> {
  const file = configArg(args, START);
  const config = readConfig(file);
  const logger = createLogger(config.log.level, undefined, config.log.format);
  let relay;
  try {
    relay = await startRelay(config, logger);
  } catch (err) {
    logger.fatal({ err }, 'relay did not start');
    logger.flush();
    // Their messages name a key path of the config (tls.key, domains.…): the file goes first, as loadConfig's do.
    if (err instanceof DkimKeyError || err instanceof ConfigError) fail(`config error: ${file}: ${err.message}`, 2);
    if (err instanceof PlaybookError) fail(`config error: ${err.message}`, 2);
    if (err instanceof IdentityError) fail(err.message, 1);
    fail((err as Error).message, 1);
  }
  // Listening before "relay started": from that record on, `dns flush` reaches this relay.
  const control = config.control.socket ? await ControlServer.listen(config.control.socket, { 'dns flush': async () => flushAnswer(await relay.flushDns()) }, logger) : undefined;
  logger.info({ ports: relay.ports, httpPort: relay.httpPort, config: file }, 'relay started');
  // doctor's checks, logged: what to publish is in the log before the first message needs it.
  const checkDns = () => void relay.doctor().then((report) => logReport(report, logger), (err: Error) => logger.error({ err }, 'DNS checks failed to run'));
  checkDns();
  // SIGHUP: key rotation and config changes without a restart; a broken file changes nothing.
  process.on('SIGHUP', () => {
    try {
      const restartNeeded = relay.reload(loadConfig(file));
      if (restartNeeded.length) logger.warn({ restartNeeded }, 'configuration reloaded; these sections apply only after a restart');
      else logger.info({ config: file }, 'configuration reloaded');
      checkDns();
    } catch (err) {
      logger.error({ error: (err as Error).message }, 'reload refused: the running configuration stays in use');
    }
  });
  let stopping = false;
  const stop = (signal: string) => {
    if (stopping) return;
    stopping = true;
    logger.info({ signal, shutdownTimeout: `${relay.shutdownTimeout / 1000}s` }, 'draining: no new connections, idle sessions closed, transactions in flight finishing');
    void Promise.all([control?.close(), relay.close()]).then(([, drained]) => {
      // Cut sessions had a transaction in flight: their clients got no 250 and retry.
      if (drained.cut) logger.warn({ idleClosed: drained.idle, cut: drained.cut }, 'stopped: sessions still open at shutdownTimeout were cut');
      else logger.info({ idleClosed: drained.idle }, 'stopped');
      logger.flush();
      process.exit(0);
    });
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}
