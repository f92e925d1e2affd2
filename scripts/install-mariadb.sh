#!/usr/bin/env bash
# Installs MariaDB 10.11 for keyops' MariaDB engine, its tests and dev stack: Debian's
# mariadb-server, mariadb-backup and mariadb-plugin-hashicorp-key-management. keyops only ever
# runs `mariadbd` as its own child process, with a data directory and socket of its own: the
# system service is kept from starting while the packages install (policy-rc.d answers 101) and
# is never used.
#
# Idempotent: when everything is there, it only prints the paths. Prints, as its last three lines:
#   mariadbd=<path>  mariadb-backup=<path>  plugin-dir=<dir holding hashicorp_key_management.so>
set -euo pipefail

# shellcheck source=scripts/lib/apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt-install.sh"

say() { printf 'install-mariadb: %s\n' "$*" >&2; }

plugin_dir() {
  local d
  for d in /usr/lib/mysql/plugin /usr/lib/x86_64-linux-gnu/mariadb19/plugin /usr/lib/*/mariadb*/plugin; do
    [[ -f "$d/hashicorp_key_management.so" ]] && { printf '%s\n' "$d"; return 0; }
  done
  return 1
}

installed() {
  command -v mariadbd >/dev/null 2>&1 || [[ -x /usr/sbin/mariadbd ]] || return 1
  command -v mariadb-backup >/dev/null 2>&1 || return 1
  command -v mbstream >/dev/null 2>&1 || return 1
  command -v mariadb-install-db >/dev/null 2>&1 || return 1
  plugin_dir >/dev/null
}

if ! installed; then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    say "error: MariaDB 10.11 is missing and this is not a Debian machine run as root."
    say "install mariadb-server, mariadb-backup and mariadb-plugin-hashicorp-key-management (10.11) and run this again"
    exit 1
  fi
  say "installing Debian's MariaDB 10.11 packages (first run only; the system service is not started)"
  apt_install_without_services mariadb-server mariadb-backup mariadb-plugin-hashicorp-key-management || { say "error: apt-get could not install mariadb-server mariadb-backup mariadb-plugin-hashicorp-key-management"; exit 1; }
  # A service that started anyway (a package whose scripts ignore policy-rc.d) is stopped: keyops
  # runs its own server and must not share port 3306 or /run/mysqld with one.
  if pgrep -x mariadbd >/dev/null 2>&1 && [[ -f /run/mysqld/mysqld.pid ]]; then
    say "stopping the system MariaDB service the packages started"
    kill "$(cat /run/mysqld/mysqld.pid)" 2>/dev/null || true
  fi
  installed || { say "error: the packages installed but mariadbd, mariadb-backup, mbstream or the hashicorp plugin is still missing"; exit 1; }
fi

mariadbd="$(command -v mariadbd || echo /usr/sbin/mariadbd)"
printf 'mariadbd=%s\n' "$mariadbd"
printf 'mariadb-backup=%s\n' "$(command -v mariadb-backup)"
printf 'plugin-dir=%s\n' "$(plugin_dir)"
