#!/usr/bin/env bash
# What the tests need from the system besides npm packages: openssl (test certificates),
# redis-server (started by the tests on a free port), Debian's python3-dkim (dkimpy, a
# DKIM verifier independent of mailauth) and python3-spf, for the RFC 7208 test suite it
# ships (test/spf-suite.test.ts); python3-prometheus-client, the Prometheus project's own
# parser of the exposition format, reads /metrics in the tests. Installs what is missing when it can (root with apt-get,
# as on CI); otherwise says what to install.
set -euo pipefail
missing=()
command -v openssl >/dev/null || missing+=(openssl)
command -v redis-server >/dev/null || missing+=(redis-server)
# systemd-analyze checks the shipped unit (deploy/systemd).
command -v systemd-analyze >/dev/null || missing+=(systemd)
{ [ -x /usr/bin/python3 ] && /usr/bin/python3 -c 'import dkim, nacl' 2>/dev/null; } || missing+=(python3-dkim python3-nacl)
[ -f /usr/share/doc/python3-spf/rfc7208-tests.yml.gz ] || missing+=(python3-spf)
/usr/bin/python3 -c 'import prometheus_client' 2>/dev/null || missing+=(python3-prometheus-client)
# The bench's smoke (test/bench-smoke.test.ts) runs Postfix + OpenDKIM when they are there:
# where they can be installed (root with apt-get, as on CI) bench/install.sh installs them;
# elsewhere the smoke goes on without them, so their absence fails nothing.
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  bash "$(dirname "$0")/../bench/install.sh" || echo "the bench smoke runs without Postfix + OpenDKIM" >&2
fi
# podman, runc and debootstrap for test/container.test.ts (root with apt-get only).
bash "$(dirname "$0")/container-deps.sh"
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
else
  echo "the tests need these system packages: ${missing[*]} (Debian: apt-get install ${missing[*]})" >&2
  exit 1
fi
