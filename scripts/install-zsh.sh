#!/usr/bin/env bash
# Installs zsh, so that the test of `keyops completion zsh` drives a real zsh (through its zpty
# module) instead of skipping: Debian's zsh package. Only the tests need it; keyops does not.
#
# Idempotent: when zsh is there, it only prints the path. Prints, as its last line:
#   zsh=<path of zsh>
set -euo pipefail

# shellcheck source=scripts/lib/apt-install.sh
source "$(dirname "${BASH_SOURCE[0]}")/lib/apt-install.sh"

say() { printf 'install-zsh: %s\n' "$*" >&2; }

if ! command -v zsh >/dev/null 2>&1; then
  if [[ $(id -u) -ne 0 ]] || ! command -v apt-get >/dev/null 2>&1; then
    say "error: zsh is missing and this is not a Debian machine run as root; install zsh and run this again"
    exit 1
  fi
  say "installing Debian's zsh (first run only)"
  apt_install_without_services zsh || { say "error: apt-get could not install zsh"; exit 1; }
fi

printf 'zsh=%s\n' "$(command -v zsh)"
