#!/usr/bin/env bash
# The project's two commands (and the set-up step both share):
#   ./dev.sh demo    set up, then run the whole chain on simulated units, with the operator page
#   ./dev.sh test    set up, then run ruff, mypy, import-linter, the quick bench and the test suite
#   ./dev.sh setup   only the test set-up: system packages (when missing), .venv, Python packages
# Works on a fresh Debian 12 / Raspberry Pi OS bookworm as root or with sudo.
set -euo pipefail
cd "$(dirname "$0")"

# mosquitto: the broker for the demo and the tests. dbus-daemon + a compiler and headers:
# the mock BlueZ the BLE tests drive bleak against (dbus-python is built from source).
# gpsd: the real gpsd the GPS client is tested against. procps: ps/pkill in tests.
# systemd: systemd-analyze, which checks the shipped unit (verify, security); it need
# not be the init system (containers, CI).
SYSTEM_PACKAGES=(mosquitto mosquitto-clients dbus-daemon gpsd openssl procps systemd
                 gcc python3-dev libdbus-1-dev libglib2.0-dev pkg-config)
# The operator page: Leaflet served from Debian's copy (no CDN); the browser test drives
# Debian's headless Chromium (never a browser download), which needs a font to draw text.
PAGE_PACKAGES=(libjs-leaflet chromium chromium-driver fonts-dejavu-core)
SYSTEM_PACKAGES+=("${PAGE_PACKAGES[@]}")
# rabbitmq-server (Erlang, its MQTT plugin): the three-node cluster of the fleet test and bench
# (fleet/cluster.py starts its own nodes; the system service is never started).
RABBITMQ_PACKAGES=(rabbitmq-server)
# PostgreSQL 15: the reference backend's database (tests start their own throw-away server,
# tests/pg.py). Installed by setup_postgres, not in this list: see there.
PG_PACKAGES=(postgresql-15)
# The AsyncAPI JSON Schema that tests/test_asyncapi.py validates docs/asyncapi.yaml
# against: AsyncAPI's own npm package, fetched with npm (Debian's nodejs and npm where the
# machine has no npm) into the git-ignored .cache/npm, never copied into the project.
ASYNCAPI_SPECS=@asyncapi/specs@6.11.1

say() { printf '\033[1m[dev.sh]\033[0m %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"
  elif command -v sudo >/dev/null; then sudo "$@"
  else say "need root (or sudo) to install: $*"; exit 1; fi
}

setup_system() {  # the packages named as arguments, those not installed yet
  local missing=()
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    say "installing system packages: ${missing[*]}"
    # policy-rc.d-free hosts would start a system mosquitto/gpsd on install; we never use them
    # (tests and the demo run their own on free loopback ports).
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -q >/dev/null
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -yq --no-install-recommends \
      "${missing[@]}" >/dev/null
  fi
}

setup_rabbitmq() {  # the packages' postinst would start a system node: deny it for the install
  local p=/usr/sbin/policy-rc.d saved=""
  dpkg-query -W -f='${Status}' rabbitmq-server 2>/dev/null | grep -q "install ok installed" && return
  if [ -e "$p" ]; then saved=$(mktemp); as_root cp -p "$p" "$saved"; fi
  as_root sh -c "printf '#!/bin/sh\\nexit 101\\n' >$p && chmod +x $p"
  local rc=0
  setup_system "${RABBITMQ_PACKAGES[@]}" || rc=$?
  if [ -n "$saved" ]; then as_root cp -p "$saved" "$p"; rm -f "$saved"; else as_root rm -f "$p"; fi
  return $rc
}

setup_postgres() {
  # postgresql-15's postinst creates and starts a system cluster 15/main on port 5432; the
  # tests and the demo never use it. Debian's documented switch against it,
  # create_main_cluster = false, lives in postgresql-common's createcluster.conf: install
  # postgresql-common first, set the switch, then the server.
  local conf=/etc/postgresql-common/createcluster.conf
  dpkg-query -W -f='${Status}' postgresql-15 2>/dev/null | grep -q "install ok installed" && return
  setup_system postgresql-common
  if [ -f "$conf" ] && ! grep -q '^create_main_cluster *= *false' "$conf"; then
    as_root sed -i 's/^#\? *create_main_cluster *=.*/create_main_cluster = false/' "$conf"
    grep -q '^create_main_cluster = false' "$conf" || \
      echo 'create_main_cluster = false' | as_root tee -a "$conf" >/dev/null
  fi
  setup_system "${PG_PACKAGES[@]}"
}

fresh() { [ -f "$1" ] && [ ! pyproject.toml -nt "$1" ]; }

setup_python() {  # $1: "test" (the test and BLE-test extras) or "demo" (the package alone)
  local py=${PYTHON:-python3}
  if [ ! -x .venv/bin/python ]; then
    say "creating .venv with $($py --version)"
    "$py" -m venv .venv
  fi
  local stamp=.venv/.kidsafe-installed-$1 target=.
  [ "$1" = test ] && target='.[test,ble-test,backend]'
  # A test set-up has everything the demo needs.
  if fresh "$stamp" || { [ "$1" = demo ] && fresh .venv/.kidsafe-installed-test; }; then
    return
  fi
  say "installing Python packages into .venv ($1)"
  .venv/bin/python -m pip install -q --upgrade pip >/dev/null
  # The layout (firmware-sim/ is the firmware_sim package) makes setuptools install the
  # editable package through an import hook, and it says so every time with a long
  # "Editable installation ... Please be careful with folders" note: an InformationOnly
  # warning (pypa/packaging-problems#558), not a problem. Only that note is filtered out;
  # errors and every other warning still show.
  PYTHONWARNINGS="ignore:Editable installation" \
    .venv/bin/python -m pip install -q -e "$target"
  touch "$stamp"
}

setup_asyncapi() {  # best effort: without it the AsyncAPI validation test skips, saying why
  local pkg=.cache/npm/node_modules/@asyncapi/specs
  if [ -f "$pkg/package.json" ] && grep -q "\"version\": \"${ASYNCAPI_SPECS##*@}\"" "$pkg/package.json"; then
    return
  fi
  command -v npm >/dev/null || setup_system nodejs npm
  say "installing $ASYNCAPI_SPECS into .cache/npm (AsyncAPI's JSON Schema, for the tests)"
  npm install --prefix .cache/npm --no-save --no-package-lock --no-audit --no-fund \
    --loglevel=error "$ASYNCAPI_SPECS" >/dev/null \
    || say "could not install $ASYNCAPI_SPECS: the AsyncAPI validation test will skip"
}

setup() { setup_system "${SYSTEM_PACKAGES[@]}"; setup_postgres; setup_rabbitmq; setup_python test;
          setup_asyncapi; }

case "${1:-}" in
  setup) setup ;;
  demo)
    # The chain needs what the tests need: the mock BlueZ for the park's BLE scanner,
    # PostgreSQL, the backend's packages.
    setup
    say "demo: simulated units -> mosquitto -> gatewayd -> kidsafe-backend -> PostgreSQL -> operator page"
    exec .venv/bin/kidsafe-sim demo --chain "${@:2}" ;;
  test)
    setup
    say "ruff"; .venv/bin/ruff check .
    say "mypy"; .venv/bin/mypy && .venv/bin/mypy tests bench
    say "import-linter"; .venv/bin/lint-imports --no-cache  # the layer contracts in pyproject.toml
    # The benchmark's quick run prints figures only (no pass/fail on speed: a shared
    # machine makes timed assertions flaky); it runs before pytest so pytest's summary
    # stays the last line CI reads.
    say "bench (quick)"; .venv/bin/python bench/run.py --quick
    say "pytest"; exec .venv/bin/python -m pytest "${@:2}" ;;
  *) sed -n '2,6s/^# \{0,1\}//p' "$0"; exit 2 ;;
esac
