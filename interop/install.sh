#!/usr/bin/env bash
# What `npm run interop` needs from the system: Postfix and Exim from Debian's packages.
# They conflict as installed packages (each one is a mail-transport-agent), so Postfix is
# installed with apt, and Exim's daemon package is only unpacked into $1 with dpkg -x; each
# then runs from its own config, spool, log and port, never the system's.
# Installs what is missing when it can (root with apt-get, as on CI); otherwise says what
# to install. Prints nothing when everything is already there.
set -euo pipefail
exim_root=${1:?usage: install.sh EXIM_UNPACK_DIR}

postfix_missing() { ! dpkg-query -W -f='${Status}' postfix 2>/dev/null | grep -q 'install ok installed'; }
exim_missing() { [ ! -x "$exim_root/usr/sbin/exim4" ] || ! getent passwd Debian-exim >/dev/null || ! ldd "$exim_root/usr/sbin/exim4" >/dev/null 2>&1 || ldd "$exim_root/usr/sbin/exim4" | grep -q 'not found'; }

postfix_missing || exim_missing || exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
  echo "interop needs Debian's postfix installed and exim4-daemon-light unpacked in $exim_root; run it once as root on Debian, or install postfix (main_mailer_type 'No configuration')" >&2
  exit 1
fi
apt-get update -qq

if postfix_missing; then
  # Installing postfix would remove another MTA the machine relies on: refuse instead.
  other=$(dpkg-query -W -f='${Package} ${Status} ${Provides}\n' 2>/dev/null | awk '/install ok installed/ && /mail-transport-agent/ {print $1}')
  if [ -n "$other" ]; then
    echo "interop: installing postfix would replace this machine's MTA ($other); install postfix by hand or run interop elsewhere" >&2
    exit 1
  fi
  # "No configuration": no /etc/postfix/main.cf, so no system instance is set up or started;
  # the interop writes its own configuration directory.
  echo "interop: installing postfix with apt"
  echo 'postfix postfix/main_mailer_type select No configuration' | debconf-set-selections
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postfix >/dev/null
fi

if exim_missing; then
  echo "interop: unpacking exim4-daemon-light into $exim_root"
  # The libraries exim4-daemon-light links against are ordinary packages that conflict with
  # nothing; apt installs those that are missing.
  libs=$(apt-cache depends exim4-daemon-light | awk '$1 == "Depends:" && $2 ~ /^lib/ {print $2}')
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $libs >/dev/null
  scratch=$(mktemp -d)
  trap 'rm -rf "$scratch"' EXIT
  # apt downloads as its _apt user when that user may write the directory.
  chown _apt "$scratch" 2>/dev/null || true
  (cd "$scratch" && apt-get download -qq exim4-daemon-light)
  rm -rf "$exim_root"
  mkdir -p "$exim_root"
  dpkg -x "$scratch"/exim4-daemon-light_*.deb "$exim_root"
  dpkg-deb -f "$scratch"/exim4-daemon-light_*.deb Version > "$exim_root/VERSION"
  # Exim looks its user up before it reads any configuration (Debian builds it with
  # EXIM_USER=ref:Debian-exim); exim4-base's postinst would create the same system user.
  getent group Debian-exim >/dev/null || groupadd --system Debian-exim
  getent passwd Debian-exim >/dev/null || useradd --system -g Debian-exim -d /nonexistent -M -s /usr/sbin/nologin Debian-exim
fi
