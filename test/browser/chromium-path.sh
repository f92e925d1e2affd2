#!/usr/bin/env bash
# Prints the path of a Chromium for the Web UI test (driven by playwright-core, which downloads
# no browser): Debian's package, installed on first use when the tests run as root on Debian.
set -euo pipefail
say() { printf 'browser: %s\n' "$*" >&2; }
for candidate in chromium chromium-browser; do
  if path="$(command -v "$candidate")"; then
    printf '%s\n' "$path"
    exit 0
  fi
done
if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
  say "installing Debian's chromium (first run only)"
  apt-get update -qq >&2 && apt-get install -y -qq --no-install-recommends chromium >&2
  command -v chromium
  exit 0
fi
say "error: the Web UI test needs chromium on PATH (Debian: apt-get install chromium)"
exit 1
