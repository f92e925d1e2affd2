#!/usr/bin/env bash
# Installs PostgreSQL for the Temporal cluster keyops runs as its production topology
# (./temporal-cluster.sh) and for its tests: Debian's postgresql package. keyops only ever runs
# `postgres` as its own child, with a cluster made by initdb under the data directory and a port
# and socket of its own: the system service is kept from starting (policy-rc.d answers 101) and
# is never used.
#
# Idempotent: when PostgreSQL is there, it only prints the path. Prints, as its last line:
#   bin=<directory holding initdb, pg_ctl, postgres, psql>
set -euo pipefail

# shellcheck source=scripts/lib/apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt-install.sh"

say() { printf 'install-postgresql: %s\n' "$*" >&2; }

bin_dir() {
  local d
  # The newest major version installed.
  for d in $(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r); do
    [[ -x "$d/initdb" && -x "$d/pg_ctl" && -x "$d/postgres" ]] && { printf '%s\n' "$d"; return 0; }
  done
  return 1
}

if ! bin_dir >/dev/null; then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    say "error: PostgreSQL is missing and this is not a Debian machine run as root."
    say "install Debian's postgresql package (12 or later) and run this again"
    exit 1
  fi
  say "installing Debian's PostgreSQL packages (first run only; the system service is not started)"
  apt_install_without_services postgresql postgresql-client || { say "error: apt-get could not install postgresql postgresql-client"; exit 1; }
  bin_dir >/dev/null || { say "error: the packages installed but initdb, pg_ctl or postgres is still missing"; exit 1; }
fi

printf 'bin=%s\n' "$(bin_dir)"
