#!/usr/bin/env bash
# What `npm run bench` needs from the system besides npm packages: smtp-source (in Debian's
# postfix package), Postfix itself and OpenDKIM, the signing relay the bench compares with.
# Postfix is installed with main_mailer_type 'No configuration', so no system instance is set
# up or started (the bench runs its own with `postfix -c DIR`); OpenDKIM's package may enable
# its service, which the bench never uses. Installs what is missing when it can (root with
# apt-get, as on CI); otherwise says what to install. Prints nothing when all is there.
set -euo pipefail
missing=()
dpkg-query -W -f='${Status}' postfix 2>/dev/null | grep -q 'install ok installed' || missing+=(postfix)
[ -x /usr/sbin/opendkim ] || missing+=(opendkim opendkim-tools)
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "the bench needs: ${missing[*]} (Debian: apt-get install ${missing[*]}, postfix with main_mailer_type 'No configuration')" >&2
  exit 1
fi
if [[ " ${missing[*]} " == *" postfix "* ]]; then
  # Installing postfix would remove another MTA the machine relies on: refuse instead.
  other=$(dpkg-query -W -f='${Package} ${Status} ${Provides}\n' 2>/dev/null | awk '/install ok installed/ && /mail-transport-agent/ {print $1}')
  if [ -n "$other" ]; then
    echo "installing postfix would replace this machine's MTA ($other); install postfix by hand or run the bench elsewhere" >&2
    exit 1
  fi
  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
