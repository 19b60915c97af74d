#!/usr/bin/env bash
# What the test suite needs beyond its Python packages, for `make test` (and so for CI):
# a single-machine Slurm, OpenSSH's clients with sshpass, Chromium, npm, podman with a registry
# (docker-registry), a static busybox and mmdebstrap for the container tests. Where this user may
# install (root, or sudo without a password) and JOBYARD_TEST_INSTALL is not 0, missing pieces
# are installed from the Debian archive; otherwise one line per piece says which tests will
# skip and how to get it. It never fails the run: a piece it cannot set up means skipped tests,
# each with its reason in pytest's summary.
set -uo pipefail
cd "$(dirname "$0")/.."

say() { echo "test-deps: $*" >&2; }

may_install() {
  [ "${JOBYARD_TEST_INSTALL:-1}" != 0 ] && command -v apt-get >/dev/null &&
    { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }
}

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; else sudo -n "$@"; fi; }

UPDATED=0
apt_install() {  # apt_install PACKAGE...: one package at a time, so one conflict blocks only it
  local pkg
  ((UPDATED)) || { as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq; UPDATED=1; }
  for pkg in "$@"; do
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      "$pkg" >/dev/null 2>&1 || say "apt-get install $pkg failed"
  done
}

have() { local t; for t in "$@"; do command -v "$t" >/dev/null || return 1; done; }

# need "TOOLS" "PACKAGES" "what skips without them"
need() {
  local tools=$1 packages=$2 skips=$3
  # shellcheck disable=SC2086
  have $tools && return 0
  # shellcheck disable=SC2086
  may_install && apt_install $packages
  # shellcheck disable=SC2086
  have $tools || say "skipping $skips: no ${tools// //}; install with: apt-get install $packages"
}

need "ssh scp sshpass" "openssh-client sshpass" "the OpenSSH client tests of the SSH gateway"
need "chromium" "chromium" "the dashboard's browser tests"
need "npm" "npm" "the dashboard's terminal tab tests (xterm.js comes from npm)"
need "podman runc docker-registry busybox" "podman catatonit runc docker-registry busybox-static" \
  "the container tests (tests/integration/test_containers.py)"
need "mmdebstrap" "mmdebstrap" \
  "the container test of a Python program in a Debian image (tests/integration/test_containers.py)"
need "htpasswd" "apache2-utils" \
  "the private registry tests (tests/integration/test_registry_credentials.py: a bcrypt htpasswd)"

# Can podman run a container with this machine's defaults? Some VMs cannot: crun fails on a hybrid
# cgroup hierarchy, and a root without CAP_SYS_RESOURCE cannot raise the open-files limit to
# podman's default. Then a containers.conf for this machine (never jobyard's own settings) takes
# runc and lower limits, unless one is there already (so runc is installed beside podman's crun).
podman_runs() {
  local root image=localhost/jobyard-test-deps/busybox:probe ok=1
  root=$(mktemp -d) || return 1
  mkdir -p "$root/bin" && cp "$(command -v busybox)" "$root/bin/busybox" && ln -s busybox "$root/bin/true"
  tar -C "$root" -c . | podman import -q - "$image" >/dev/null 2>&1 &&
    podman run --rm --init --network host "$image" /bin/true >/dev/null 2>&1 && ok=0
  podman rmi -f "$image" >/dev/null 2>&1
  rm -rf "$root"
  return $ok
}
if have podman busybox && ! podman_runs; then
  conf=/etc/containers/containers.conf
  if [ ! -e "$conf" ] && { [ "$(id -u)" = 0 ] || sudo -n true 2>/dev/null; }; then
    printf '%s\n' '# written by jobyard .ci/test-deps.sh: podman failed with its defaults here' \
      '[containers]' 'default_ulimits = ["nofile=20000:20000", "nproc=4096:4096"]' \
      '[engine]' 'runtime = "runc"' | as_root tee "$conf" >/dev/null
  fi
  podman_runs || say "skipping the container tests: podman cannot run a container here (try: podman run --rm <image> true)"
fi
have initdb pg_ctl ||
  say "skipping the PostgreSQL tests: initdb and pg_ctl are not on PATH (Debian: postgresql, then add /usr/lib/postgresql/*/bin to PATH)"

if may_install || have sbatch slurmctld; then
  .ci/slurm-setup.sh >/dev/null || say "skipping the Slurm tests: .ci/slurm-setup.sh could not start a cluster (its messages are above)"
else
  say "skipping the Slurm tests: run .ci/slurm-setup.sh as root (it installs and starts a single-machine Slurm)"
fi
exit 0
