# apt_install_without_services PACKAGE...: installs Debian packages while keeping their system
# services from starting (policy-rc.d answers 101): keyops runs each server as its own child,
# with its own data, port and socket. Sourced by the scripts/install-*.sh scripts.
apt_install_without_services() {
  local guard=/usr/sbin/policy-rc.d backup="" status=0
  if [[ -e "$guard" ]]; then backup="$(mktemp)"; cp -p "$guard" "$backup"; fi
  printf '#!/bin/sh\nexit 101\n' >"$guard"
  chmod 755 "$guard"
  # An apt index too old to know the packages is refreshed once.
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2 ||
    { DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >&2; } ||
    status=$?
  if [[ -n "$backup" ]]; then cp -p "$backup" "$guard" && rm -f "$backup"; else rm -f "$guard"; fi
  return "$status"
}
