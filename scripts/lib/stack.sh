# Shell helpers of the stack scripts (temporal-dev.sh, temporal-cluster.sh): messages, port and
# process checks, waiting for a child to come up, stopping one. Sourced; the script sets
# STACK_NAME (the prefix of its messages) and START_TIMEOUT first.

say() { printf '%s: %s\n' "$STACK_NAME" "$*" >&2; }
die() {
  say "error: $*"
  exit 1
}

require_number() { # require_number NAME VALUE
  [[ $2 =~ ^[0-9]+$ ]] || die "$1 must be a whole number, got '$2'"
}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_for() { # wait_for DESCRIPTION PID LOG COMMAND...
  local what=$1 pid=$2 log=$3 deadline=$((SECONDS + START_TIMEOUT))
  shift 3
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "$pid" 2>/dev/null; then
      tail -n 20 "$log" >&2 || true
      die "$what exited during start-up; full log in $log"
    fi
    ((SECONDS < deadline)) || die "$what did not come up within ${START_TIMEOUT}s; log in $log"
    sleep 0.5
  done
}

stop_pid() { # stop_pid NAME PID
  local name=$1 pid=$2 deadline=$((SECONDS + 30))
  kill -TERM "$pid" 2>/dev/null || return 0
  while kill -0 "$pid" 2>/dev/null; do
    if ((SECONDS >= deadline)); then
      say "$name (pid $pid) did not stop within 30s; killing it"
      kill -KILL "$pid" 2>/dev/null || true
      break
    fi
    sleep 0.2
  done
  say "stopped $name (pid $pid)"
}
