#!/usr/bin/env bash
# keyops' production topology on one machine: a Temporal cluster built from Temporal's own
# server (frontend, history, matching and worker as separate processes from one config) on a
# private PostgreSQL, plus its Web UI. Run `./temporal-cluster.sh --help` for usage.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SERVER_VERSION="v1.29.1" # later tags need a newer Go toolchain than this machine's
UI_VERSION="v2.42.1"     # the Web UI the Temporal CLI v1.5.1 embeds
CACHE="$ROOT/.cache"
CACHE_BIN="$CACHE/bin"
SERVER_BIN="$CACHE_BIN/temporal-server-$SERVER_VERSION"
SQL_TOOL="$CACHE_BIN/temporal-sql-tool-$SERVER_VERSION"
UI_BIN="$CACHE_BIN/temporal-ui-server-$UI_VERSION"
SCHEMA_DIR="$CACHE/temporal-server-$SERVER_VERSION/schema/postgresql/v12"

IP="127.0.0.1"
PORT="${KEYOPS_TEMPORAL_PORT:-7233}"
UI_PORT="${KEYOPS_UI_PORT:-8233}"
SHARDS="${KEYOPS_CLUSTER_SHARDS:-4}"
DATA_DIR="$(realpath -m -- "${KEYOPS_DATA_DIR:-$ROOT/.data}")"
CLUSTER_DIR="$DATA_DIR/cluster"
PG_DIR="$CLUSTER_DIR/postgres"
# Inside its own directory: the postgres account (a root caller's) writes it.
PG_LOG="$PG_DIR/server.log"
CONFIG_DIR="$CLUSTER_DIR/config"
RUN_DIR="$CLUSTER_DIR/run"
LOG_DIR="$CLUSTER_DIR/logs"
START_TIMEOUT="${KEYOPS_START_TIMEOUT:-120}"
SERVICES=(history matching frontend worker)

usage() {
  # A quoted heredoc: nothing in the text runs or expands (backticks in an unquoted one run what
  # they quote, as temporal-dev.sh's --help once ran `keyops init`); the settings it shows are
  # filled in below.
  local text
  IFS= read -r -d '' text <<'EOF' || true # read's status is 1 at the end of its input
Usage: ./temporal-cluster.sh [command] [options]

Runs a Temporal cluster as operators run one, on this machine: Temporal's own server
@SERVER_VERSION@, its frontend, history, matching and worker services as four processes from one
config (based on the server's development-postgres12 sample, @SHARDS@ history shards), with
persistence and advanced visibility on a private PostgreSQL cluster (initdb and pg_ctl under the
data directory, its own port and socket, never the system service), the namespace "default", the
keyops search attributes, and Temporal's Web UI. The keyops worker and CLI connect to it as to
any Temporal: TEMPORAL_ADDRESS=@IP@:@PORT@.

Commands:
  up                 start whatever is not running yet; returns once the frontend answers
  down               stop the services, the Web UI and PostgreSQL (data is kept)
  status             what runs, where (exit 3 if not all up)
  logs [SERVICE] [-f]  the last log lines of frontend|history|matching|worker|ui|postgres|setup
  kill SERVICE       SIGKILL one service (a fault drill); `up` starts it again
  paths              print the built binaries, building them first if needed

  -h, --help         this help

Environment (defaults in brackets):
  KEYOPS_TEMPORAL_PORT     frontend gRPC port; the cluster uses this port and the nine above it:
                           history +1, matching +2, worker +3, frontend HTTP +4, membership
                           +5..+8, PostgreSQL +9 [7233]
  KEYOPS_UI_PORT           Web UI port [8233]
  KEYOPS_CLUSTER_SHARDS    history shards, fixed when the cluster is first created [4]
  KEYOPS_DATA_DIR          the cluster lives in its cluster/ directory [@ROOT@/.data]
  KEYOPS_START_TIMEOUT     seconds to wait for each part [120]

First start builds the server, its SQL schema tool and the Web UI server with `go install`
into .cache/bin (several minutes), installs PostgreSQL from Debian's packages if missing
(scripts/install-postgresql.sh), creates the cluster and its schema.

Examples:
  ./temporal-cluster.sh up && TEMPORAL_ADDRESS=@IP@:@PORT@ npm run worker
  TEMPORAL_ADDRESS=@IP@:@PORT@ npx keyops ping
  ./temporal-cluster.sh kill history && ./temporal-cluster.sh up      # a history restart
  ./temporal-cluster.sh down
EOF
  text=${text//@SERVER_VERSION@/"$SERVER_VERSION"}
  text=${text//@SHARDS@/"$SHARDS"}
  text=${text//@IP@/"$IP"}
  text=${text//@PORT@/"$PORT"}
  text=${text//@ROOT@/"$ROOT"}
  printf '%s' "$text"
}

STACK_NAME=temporal-cluster
# shellcheck source=scripts/lib/stack.sh
source "$ROOT/scripts/lib/stack.sh"
validate_settings() {
  require_number KEYOPS_TEMPORAL_PORT "$PORT"
  require_number KEYOPS_UI_PORT "$UI_PORT"
  require_number KEYOPS_CLUSTER_SHARDS "$SHARDS"
  require_number KEYOPS_START_TIMEOUT "$START_TIMEOUT"
  ((PORT >= 1024 && PORT + 9 <= 65535)) || die "KEYOPS_TEMPORAL_PORT must leave room for nine ports above it (1024 to 65526), got $PORT"
  ((SHARDS >= 1)) || die "KEYOPS_CLUSTER_SHARDS must be at least 1"
  # A path PostgreSQL's config and the shell take as it is.
  [[ $DATA_DIR =~ ^[A-Za-z0-9_./+-]+$ ]] || die "KEYOPS_DATA_DIR must be a path of letters, digits and _./+- for the cluster, got '$DATA_DIR'"
  HTTP_PORT=$((PORT + 4))
  PG_PORT=$((PORT + 9))
}

port_of() { # port_of SERVICE [membership]
  local i
  case $1 in frontend) i=0 ;; history) i=1 ;; matching) i=2 ;; worker) i=3 ;; *) die "no service $1" ;; esac
  if [[ ${2:-} == membership ]]; then echo $((PORT + 5 + i)); else echo $((PORT + i)); fi
}

# --- binaries ----------------------------------------------------------------------------

go_build() { # go_build MODULE@VERSION TARGET
  local module=$1 target=$2 tmp log="$CACHE/build-$(basename "$2").log"
  command -v go >/dev/null 2>&1 || die "Go is not installed: it builds the Temporal server (Go >= 1.24)"
  tmp="$(mktemp -d)"
  say "building $module (first run only, a few minutes; log: ${log#"$ROOT"/})"
  local started=$SECONDS
  if ! GOBIN="$tmp" CGO_ENABLED=0 go install "$module" >"$log" 2>&1; then
    tail -n 20 "$log" >&2
    rm -rf "$tmp"
    say "building $module failed; full log in $log"
    return 1
  fi
  mv "$tmp"/* "$target"
  rm -rf "$tmp"
  say "built $(basename "$target") in $((SECONDS - started))s"
}

ensure_binaries() {
  mkdir -p "$CACHE_BIN"
  [[ -x $SERVER_BIN ]] || go_build "go.temporal.io/server/cmd/server@$SERVER_VERSION" "$SERVER_BIN" || die "no Temporal server"
  [[ -x $SQL_TOOL ]] || go_build "go.temporal.io/server/cmd/tools/sql@$SERVER_VERSION" "$SQL_TOOL" || die "no SQL schema tool"
  if [[ ! -d $SCHEMA_DIR ]]; then
    # The schema ships in the server's module, which go install just fetched.
    local module
    module="$(GOFLAGS=-mod=mod go env GOMODCACHE)/go.temporal.io/server@$SERVER_VERSION/schema/postgresql/v12"
    [[ -d $module ]] || GOFLAGS=-mod=mod go mod download "go.temporal.io/server@$SERVER_VERSION" >/dev/null 2>&1 || true
    [[ -d $module ]] || die "the server's schema files are not in the Go module cache ($module)"
    mkdir -p "$(dirname "$SCHEMA_DIR")"
    cp -r "$module" "$SCHEMA_DIR"
    chmod -R u+w "$SCHEMA_DIR"
  fi
  # Without it the cluster still runs; the README says how to point another UI at it.
  [[ -x $UI_BIN ]] || go_build "github.com/temporalio/ui-server/v2/cmd/server@$UI_VERSION" "$UI_BIN" || say "continuing without the Web UI"
  return 0
}

ensure_cli() { "$ROOT/temporal-dev.sh" cli-path; }

# --- PostgreSQL --------------------------------------------------------------------------

PG_BIN=""
# PostgreSQL refuses to run as root: a root caller runs it as the "postgres" account.
as_pg() {
  if [[ $(id -u) -eq 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi
}

ensure_postgres_installed() {
  local line
  line="$("$ROOT/scripts/install-postgresql.sh" | tail -n 1)" || die "could not install PostgreSQL (scripts/install-postgresql.sh)"
  PG_BIN="${line#bin=}"
}

pg_pid() {
  local pid
  [[ -f $PG_DIR/postmaster.pid ]] || return 1
  pid="$(head -n 1 "$PG_DIR/postmaster.pid")"
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  # A stale pid file (a crash, a reboot) may name a pid some other process has now.
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$PG_DIR" || return 1
  printf '%s\n' "$pid"
}

pg_password() { cat "$CLUSTER_DIR/postgres.password"; }

init_postgres() {
  [[ -f $PG_DIR/PG_VERSION ]] && return 0
  say "creating a private PostgreSQL cluster in ${PG_DIR#"$ROOT"/}"
  mkdir -p "$PG_DIR" "$RUN_DIR"
  # The password exists only in this 0600 file and the cluster's 0600 config.
  head -c 24 /dev/urandom | base64 | tr -d '/+=' >"$CLUSTER_DIR/postgres.password"
  local pwfile="$RUN_DIR/pwfile"
  pg_password >"$pwfile"
  if [[ $(id -u) -eq 0 ]]; then
    # The postgres account must reach its directory: each directory above it gets search (x)
    # permission for others, nothing more (no listing, no reading; files stay 0600).
    local d="$PG_DIR"
    while [[ $d != / ]]; do
      d="$(dirname "$d")"
      chmod o+x "$d"
    done
    chown -R postgres: "$PG_DIR" "$RUN_DIR"
  fi
  as_pg "$PG_BIN/initdb" -D "$PG_DIR" -U temporal --pwfile="$pwfile" --auth=scram-sha-256 -E UTF8 >"$LOG_DIR/setup.log" 2>&1 ||
    { tail -n 20 "$LOG_DIR/setup.log" >&2; die "initdb failed; log in $LOG_DIR/setup.log"; }
  rm -f "$pwfile"
  printf "include_if_exists = 'keyops.conf'\n" | as_pg tee -a "$PG_DIR/postgresql.conf" >/dev/null
}

start_postgres() {
  pg_pid >/dev/null && return 0
  say "starting PostgreSQL on $IP:$PG_PORT"
  # Rewritten at each start (the port follows KEYOPS_TEMPORAL_PORT); the socket goes in the
  # cluster's run directory, never /var/run/postgresql.
  printf "port = %s\nlisten_addresses = '%s'\nunix_socket_directories = '%s'\nmax_connections = 200\n" "$PG_PORT" "$IP" "$RUN_DIR" |
    as_pg tee "$PG_DIR/keyops.conf" >/dev/null
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR" -l "$PG_LOG" -w -t "$START_TIMEOUT" start >/dev/null ||
    { tail -n 20 "$PG_LOG" >&2; die "PostgreSQL did not start; log in $PG_LOG"; }
}

stop_postgres() {
  pg_pid >/dev/null || return 0
  as_pg "$PG_BIN/pg_ctl" -D "$PG_DIR" -m fast -w stop >/dev/null && say "stopped PostgreSQL"
}

sql_tool() { SQL_PASSWORD="$(pg_password)" "$SQL_TOOL" --plugin postgres12 --ep "$IP" -p "$PG_PORT" -u temporal "$@"; }

setup_schema() {
  local db dir step
  for db in temporal temporal_visibility; do
    dir="$SCHEMA_DIR/temporal/versioned"
    [[ $db == temporal_visibility ]] && dir="$SCHEMA_DIR/visibility/versioned"
    # Each step once, marked when it succeeded: a setup cut short resumes where it stopped.
    for step in create setup update-$SERVER_VERSION; do
      [[ -f $CLUSTER_DIR/schema-$db-$step.done ]] && continue
      [[ $step == create ]] && say "creating the $db database and its schema"
      case $step in
        create) sql_tool --db "$db" create-database ;;
        setup) sql_tool --db "$db" setup-schema -v 0.0 ;;
        *) sql_tool --db "$db" update-schema -d "$dir" ;;
      esac >>"$LOG_DIR/setup.log" 2>&1 || { tail -n 20 "$LOG_DIR/setup.log" >&2; die "schema step '$step' of $db failed; log in $LOG_DIR/setup.log"; }
      touch "$CLUSTER_DIR/schema-$db-$step.done"
    done
  done
}

# --- the Temporal services ---------------------------------------------------------------

write_config() {
  mkdir -p "$CONFIG_DIR/dynamicconfig"
  local shards="$SHARDS"
  # The shard count is fixed once the cluster exists: a later KEYOPS_CLUSTER_SHARDS is ignored.
  [[ -f $CLUSTER_DIR/shards ]] && shards="$(<"$CLUSTER_DIR/shards")" || echo "$SHARDS" >"$CLUSTER_DIR/shards"
  local password
  password="$(pg_password)"
  local datastore
  datastore() {
    cat <<EOF
      sql:
        pluginName: "postgres12"
        databaseName: "$1"
        connectAddr: "$IP:$PG_PORT"
        connectProtocol: "tcp"
        user: "temporal"
        password: "$password"
        maxConns: $2
        maxIdleConns: $2
        maxConnLifetime: "1h"
EOF
  }
  local service services=""
  for service in "${SERVICES[@]}"; do
    services+="  $service:
    rpc:
      grpcPort: $(port_of "$service")
      membershipPort: $(port_of "$service" membership)
      bindOnLocalHost: true
"
    [[ $service == frontend ]] && services+="      httpPort: $HTTP_PORT
"
  done
  # Based on the server's config/development-postgres12.yaml: no archival, no pprof or metrics
  # listener (four processes share this file; one port each would clash), the ports above.
  cat >"$CONFIG_DIR/cluster.yaml" <<EOF
log:
  stdout: true
  level: warn

persistence:
  defaultStore: postgres-default
  visibilityStore: postgres-visibility
  numHistoryShards: $shards
  datastores:
    postgres-default:
$(datastore temporal 20)
    postgres-visibility:
$(datastore temporal_visibility 10)

global:
  membership:
    maxJoinDuration: 30s
    broadcastAddress: "$IP"

services:
$services
clusterMetadata:
  enableGlobalNamespace: false
  failoverVersionIncrement: 10
  masterClusterName: "active"
  currentClusterName: "active"
  clusterInformation:
    active:
      enabled: true
      initialFailoverVersion: 1
      rpcName: "frontend"
      rpcAddress: "$IP:$PORT"
      httpAddress: "$IP:$HTTP_PORT"

dcRedirectionPolicy:
  policy: "noop"

dynamicConfigClient:
  filepath: "$CONFIG_DIR/dynamicconfig/cluster.yaml"
  pollInterval: "10s"
EOF
  # What the dev server also sets: search attributes usable as soon as they are registered,
  # updates, and persistence rates that do not throttle a fleet night on one machine.
  cat >"$CONFIG_DIR/dynamicconfig/cluster.yaml" <<'EOF'
system.forceSearchAttributesCacheRefreshOnRead:
  - value: true
frontend.enableUpdateWorkflowExecution:
  - value: true
frontend.enableUpdateWorkflowExecutionAsyncAccepted:
  - value: true
frontend.persistenceMaxQPS:
  - value: 10000
history.persistenceMaxQPS:
  - value: 45000
matching.persistenceMaxQPS:
  - value: 10000
# The schedulers' worker: a night of aligned schedules queues hundreds of scheduler tasks on its
# sticky queue. After the default 5 s they expire to the normal queue, which its pollers skip
# while the sticky queue has a backlog, and the night's starts stall for a minute or more.
worker.perNamespaceWorkerOptions:
  - value:
      StickyScheduleToStartTimeout: "60s"
# That worker polls only its sticky queue while the server reports a backlog there, and the last
# report can be stale: a task that did expire into the normal queue then waited out a whole
# long poll of the sticky one (1 min by default). 10 s bounds that wait.
matching.longPollExpirationInterval:
  - value: 10s
EOF
  chmod 600 "$CONFIG_DIR/cluster.yaml"
}

service_pid() { # service_pid SERVICE
  local file="$RUN_DIR/$1.pid" pid
  [[ -f $file ]] || return 1
  pid="$(<"$file")"
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "--root $CLUSTER_DIR .*--service $1" || return 1
  printf '%s\n' "$pid"
}

ui_pid() {
  local pid
  [[ -f $RUN_DIR/ui.pid ]] || return 1
  pid="$(<"$RUN_DIR/ui.pid")"
  [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$CLUSTER_DIR/ui" || return 1
  printf '%s\n' "$pid"
}

start_service() {
  local service=$1
  service_pid "$service" >/dev/null && return 0
  local port
  for port in "$(port_of "$service")" "$(port_of "$service" membership)"; do
    port_open "$IP" "$port" && die "port $port ($service) on $IP is already in use; choose another KEYOPS_TEMPORAL_PORT"
  done
  say "starting the $service service on $IP:$(port_of "$service")"
  (exec setsid "$SERVER_BIN" --root "$CLUSTER_DIR" --config config --env cluster --allow-no-auth start --service "$service" \
    >>"$LOG_DIR/$service.log" 2>&1 </dev/null 9>&-) &
  echo $! >"$RUN_DIR/$service.pid"
  # The worker service serves no gRPC: it is up once it has joined the membership ring.
  local ready
  ready="$(port_of "$service")"
  [[ $service == worker ]] && ready="$(port_of "$service" membership)"
  wait_for "the $service service" "$!" "$LOG_DIR/$service.log" port_open "$IP" "$ready"
}

temporal_cli() { "$CLI" --address "$IP:$PORT" "$@"; }

register_namespace_and_attributes() {
  wait_for "the frontend" "$(service_pid frontend)" "$LOG_DIR/frontend.log" temporal_cli operator cluster health
  if ! temporal_cli operator namespace describe --namespace default >/dev/null 2>&1; then
    say "creating the namespace default (3 days of retention)"
    temporal_cli operator namespace create --namespace default --retention 72h >/dev/null
  fi
  # A namespace just created reaches the frontend's cache within seconds.
  wait_for "the namespace default" "$(service_pid frontend)" "$LOG_DIR/frontend.log" temporal_cli operator search-attribute list --namespace default
  local existing name type wanted
  existing="$(temporal_cli operator search-attribute list --namespace default)"
  wanted="$(cd "$ROOT" && node -e '
    const { keyopsSearchAttributes } = require("./dist/workflows/search-attributes");
    for (const k of keyopsSearchAttributes) console.log(`${k.name}=${k.type}`);
  ')" || die "cannot read the search attributes from dist/workflows (try npm run build)"
  while IFS='=' read -r name type; do
    grep -qw -- "$name" <<<"$existing" && continue
    say "registering search attribute $name ($type)"
    temporal_cli operator search-attribute create --namespace default --name "$name" --type "$type" >/dev/null
  done <<<"$wanted"
}

start_ui() {
  [[ -x $UI_BIN ]] || { say "no Web UI server was built (see $CACHE/build-$(basename "$UI_BIN").log); point a Temporal UI at $IP:$PORT instead"; return 0; }
  ui_pid >/dev/null && return 0
  port_open "$IP" "$UI_PORT" && die "port $UI_PORT (Web UI) on $IP is already in use; choose another KEYOPS_UI_PORT"
  mkdir -p "$CLUSTER_DIR/ui/config"
  cat >"$CLUSTER_DIR/ui/config/cluster.yaml" <<EOF
temporalGrpcAddress: $IP:$PORT
host: $IP
port: $UI_PORT
enableUi: true
defaultNamespace: default
notifyOnNewVersion: false
cors:
  allowOrigins:
    - http://$IP:$UI_PORT
EOF
  say "starting the Web UI on http://$IP:$UI_PORT"
  (exec setsid "$UI_BIN" --root "$CLUSTER_DIR/ui" --config config --env cluster start >>"$LOG_DIR/ui.log" 2>&1 </dev/null 9>&-) &
  echo $! >"$RUN_DIR/ui.pid"
  wait_for "the Web UI" "$!" "$LOG_DIR/ui.log" port_open "$IP" "$UI_PORT"
}

# --- commands ----------------------------------------------------------------------------

cmd_up() {
  (($# == 0)) || die "up takes no arguments (see --help)"
  umask 077
  mkdir -p "$CLUSTER_DIR" "$RUN_DIR" "$LOG_DIR"
  local started=$SECONDS
  ensure_binaries
  CLI="$(ensure_cli)"
  [[ -f $ROOT/dist/workflows/search-attributes.js ]] || (cd "$ROOT" && npm run --silent build) >&2
  ensure_postgres_installed
  init_postgres
  start_postgres
  setup_schema
  write_config
  local service
  for service in "${SERVICES[@]}"; do start_service "$service"; done
  register_namespace_and_attributes
  start_ui
  local ui=""
  ui_pid >/dev/null && ui=", Web UI http://$IP:$UI_PORT"
  say "up in $((SECONDS - started))s: TEMPORAL_ADDRESS=$IP:$PORT$ui"
}

cmd_down() {
  local pid any=false
  if pid="$(ui_pid)"; then stop_pid "the Web UI" "$pid" && any=true; fi
  local service
  for service in frontend worker matching history; do
    if pid="$(service_pid "$service")"; then stop_pid "the $service service" "$pid" && any=true; fi
  done
  if pg_pid >/dev/null; then
    ensure_postgres_installed
    stop_postgres
    any=true
  fi
  [[ $any == true ]] || say "nothing was running"
}

cmd_status() {
  local pid ok=0 service
  for service in "${SERVICES[@]}"; do
    if pid="$(service_pid "$service")"; then
      printf '%-10s running, pid %s, gRPC %s:%s\n' "$service" "$pid" "$IP" "$(port_of "$service")"
    else
      printf '%-10s stopped\n' "$service"
      ok=3
    fi
  done
  if pid="$(pg_pid)"; then printf '%-10s running, pid %s, %s:%s, data %s\n' postgres "$pid" "$IP" "$PG_PORT" "$PG_DIR"; else
    printf '%-10s stopped\n' postgres
    ok=3
  fi
  if pid="$(ui_pid)"; then printf '%-10s running, pid %s, http://%s:%s\n' "web ui" "$pid" "$IP" "$UI_PORT"; else printf '%-10s stopped\n' "web ui"; fi
  printf '%-10s TEMPORAL_ADDRESS=%s:%s\n' address "$IP" "$PORT"
  return $ok
}

cmd_logs() {
  local follow=false files=()
  while (($#)); do
    case $1 in
      frontend | history | matching | worker | ui | setup) files+=("$LOG_DIR/$1.log") ;;
      postgres) files+=("$PG_LOG") ;;
      -f | --follow) follow=true ;;
      *) die "unknown argument for logs: $1 (expected frontend, history, matching, worker, ui, postgres, setup or -f)" ;;
    esac
    shift
  done
  ((${#files[@]})) || files=("$LOG_DIR/frontend.log" "$LOG_DIR/history.log")
  for f in "${files[@]}"; do [[ -f $f ]] || die "no log yet at $f (has ./temporal-cluster.sh up run?)"; done
  if [[ $follow == true ]]; then exec tail -n 50 -F "${files[@]}"; fi
  tail -n 50 "${files[@]}"
}

cmd_kill() {
  local service=${1:-} pid
  [[ " ${SERVICES[*]} " == *" $service "* ]] || die "kill needs a service: ${SERVICES[*]}"
  pid="$(service_pid "$service")" || die "the $service service is not running"
  kill -KILL "$pid"
  local deadline=$((SECONDS + 10))
  # Gone, or a zombie its parent has not reaped yet: either way it serves nothing.
  while kill -0 "$pid" 2>/dev/null && [[ $(awk '{print $3}' "/proc/$pid/stat" 2>/dev/null) != Z ]] && ((SECONDS < deadline)); do sleep 0.1; done
  say "killed the $service service (pid $pid) with SIGKILL"
}

cmd_paths() {
  ensure_binaries
  printf 'server=%s\nsql-tool=%s\nui-server=%s\nschema=%s\n' "$SERVER_BIN" "$SQL_TOOL" "$UI_BIN" "$SCHEMA_DIR"
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
    kill) cmd_kill "$@" ;;
    paths) cmd_paths ;;
    *)
      say "unknown command: $cmd"
      usage >&2
      exit 2
      ;;
  esac
}

main "$@"
