#!/usr/bin/env bash
# Installs moto's server mode (`moto_server`, PyPI `moto[server]`), the AWS emulator keyops'
# AWS KMS adapter is tested against, into a project-local venv (.cache/venv-moto, git-ignored).
# Nothing is installed system-wide; everything comes from the package registry through pip.
#
# Idempotent: when the venv already holds the pinned version, it only prints the binary's path
# (no pip call, well under a second).
# Prints, as its last line, the absolute path of `moto_server`.
#
# Environment: MOTO_VERSION (default 5.2.5), KEYOPS_MOTO_VENV (default .cache/venv-moto),
# PYTHON (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${MOTO_VERSION:-5.2.5}"
VENV="${KEYOPS_MOTO_VENV:-$ROOT/.cache/venv-moto}"
PYTHON="${PYTHON:-python3}"
STAMP="$VENV/.moto-$VERSION"
SERVER="$VENV/bin/moto_server"

log() { printf 'install-moto: %s\n' "$*" >&2; }

if [[ -f "$STAMP" && -x "$SERVER" && -x "$VENV/bin/python" ]]; then
  printf '%s\n' "$SERVER"
  exit 0
fi

started=$(date +%s)
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV"
fi
log "pip install moto[server]==$VERSION"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "moto[server]==$VERSION" >&2 || {
  log "moto[server]==$VERSION was refused; versions the index offers:"
  "$VENV/bin/python" -m pip index versions moto >&2 || true
  exit 1
}
if [[ ! -x "$SERVER" ]]; then
  log "moto $VERSION installed, but $SERVER is missing (was the [server] extra installed?)"
  exit 1
fi
installed="$("$VENV/bin/python" -c 'from importlib.metadata import version; print(version("moto"))')"
if [[ "$installed" != "$VERSION" ]]; then
  log "asked for moto $VERSION, the venv holds $installed"
  exit 1
fi
rm -f "$VENV"/.moto-*
touch "$STAMP"
log "moto $installed installed in $(( $(date +%s) - started )) s"
printf '%s\n' "$SERVER"
