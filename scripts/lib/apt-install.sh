# apt_install_without_services PACKAGE...: installs Debian packages while keeping their system
# services from starting (policy-rc.d answers 101): keyops runs each server as its own child,
# with its own data, port and socket. Sourced by the scripts/install-*.sh scripts.
apt_install_without_services() {
  local guard=/usr/sbin/policy-rc.d backup="" status=0 lock_fd
  # Test files run in parallel and may each need a package on a fresh machine: two apt-gets at
  # once fail on dpkg's lock, and two of these functions would save and restore each other's
  # policy-rc.d. One runs at a time; the next finds its packages installed and returns at once.
  # Any other apt-get (unattended upgrades) is waited for through dpkg's own lock.
  exec {lock_fd}>"${TMPDIR:-/tmp}/keyops-apt-install.lock"
  flock "$lock_fd"
  if [[ -e "$guard" ]]; then backup="$(mktemp)"; cp -p "$guard" "$backup"; fi
  printf '#!/bin/sh\nexit 101\n' >"$guard"
  chmod 755 "$guard"
  # An apt index too old to know the packages is refreshed once.
  local wait=(-o DPkg::Lock::Timeout=600)
  DEBIAN_FRONTEND=noninteractive apt-get "${wait[@]}" install -y -qq --no-install-recommends "$@" >&2 ||
    { DEBIAN_FRONTEND=noninteractive apt-get "${wait[@]}" update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get "${wait[@]}" install -y -qq --no-install-recommends "$@" >&2; } ||
    status=$?
  if [[ -n "$backup" ]]; then cp -p "$backup" "$guard" && rm -f "$backup"; else rm -f "$guard"; fi
  exec {lock_fd}>&-
  return "$status"
}
