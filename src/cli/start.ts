import { availableParallelism } from 'node:os';
import { DkimKeyError } from '../auth/index.ts';
import { ConfigError, loadConfig, type Config } from '../config/index.ts';
import { ControlServer, controlCommands } from '../control/index.ts';
import { PlaybookError } from '../delivery/index.ts';
import { logReport } from '../doctor/index.ts';
import { IdentityError } from '../identity/index.ts';
import { createLogger } from '../observability/index.ts';
import { startRelay } from '../relay.ts';
import { joinSupervisor, supervise } from '../supervisor/index.ts';
import { CONFIG_HELP, configArg, fail, HELP_HELP, readConfig, type Command } from './common.ts';

const START: Command = {
  name: 'start',
  usage: `usage: hygiene-relay start [--config FILE]

Runs the relay until SIGTERM or SIGINT; SIGHUP reloads the configuration
(check it first: hygiene-relay config check). With workers other than 1, one
supervisor process runs that many relay processes.

options:
${CONFIG_HELP}
${HELP_HELP}
`,
};

/** `start`: runs the relay until SIGTERM/SIGINT; SIGHUP reloads the configuration. */
export async function start(args: string[]): Promise<void> {
  const file = configArg(args, START);
  const config = readConfig(file);
  const link = joinSupervisor();
  const workers = config.workers === 'auto' ? availableParallelism() : config.workers;
  if (!link && workers > 1) return supervise(file, config, workers).catch((err: Error) => fail(err.message, 1));
  // A worker writes JSON records for its supervisor, which writes them out in log.format.
  const logger = link ? createLogger(config.log.level).child({ worker: link.id }) : createLogger(config.log.level, undefined, config.log.format);
  // A worker's HTTP port is its supervisor's.
  const settings = (loaded: Config): Config => (link ? { ...loaded, http: null } : loaded);
  let relay;
  try {
    relay = await startRelay(settings(config), logger, { local: link?.state });
  } catch (err) {
    logger.fatal({ err }, 'relay did not start');
    logger.flush();
    // Their messages name a key path of the config (tls.key, domains.…): the file goes first, as loadConfig's do.
    if (err instanceof DkimKeyError || err instanceof ConfigError) fail(`config error: ${file}: ${err.message}`, 2);
    if (err instanceof PlaybookError) fail(`config error: ${err.message}`, 2);
    if (err instanceof IdentityError) fail(err.message, 1);
    fail((err as Error).message, 1);
  }
  // doctor's checks, logged: what to publish is in the log before the first message needs it.
  const doctor = () => relay.doctor().then((report) => logReport(report, logger), (err: Error) => logger.error({ err }, 'DNS checks failed to run'));
  // SIGHUP: key rotation and config changes without a restart; a broken file changes nothing.
  const reload = () => {
    try {
      const restartNeeded = relay.reload(settings(loadConfig(file)));
      if (restartNeeded.length) logger.warn({ restartNeeded }, 'configuration reloaded; these sections apply only after a restart');
      else logger.info({ config: file }, 'configuration reloaded');
      return true;
    } catch (err) {
      logger.error({ error: (err as Error).message }, 'reload refused: the running configuration stays in use');
      return false;
    }
  };
  let control: ControlServer | undefined;
  if (link) {
    // The supervisor asks for the checks (of one worker) and for reloads (after checking the file itself).
    link.started(relay.ports, { readiness: () => relay.readiness(), flushDns: () => relay.flushDns(), abuse: relay.abuse, doctor, reload });
    logger.info({ ports: relay.ports, pid: process.pid }, 'worker started');
    // A SIGHUP sent to the whole process group reaches the supervisor too, which forwards it once.
    process.on('SIGHUP', () => undefined);
  } else {
    // Listening before "relay started": from that record on, `dns flush` reaches this relay.
    control = config.control.socket ? await ControlServer.listen(config.control.socket, controlCommands({ flushDns: () => relay.flushDns(), abuse: relay.abuse }), logger) : undefined;
    logger.info({ ports: relay.ports, httpPort: relay.httpPort, config: file }, 'relay started');
    void doctor();
    process.on('SIGHUP', () => {
      if (reload()) void doctor();
    });
  }
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
  // A worker's come from its supervisor, or from a Ctrl-C to the whole process group: either drains it, once.
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
}
