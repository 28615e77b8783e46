#!/usr/bin/env bash
# Sets up everything the tests need on a fresh Debian machine, then runs them.
# System packages: Chromium (browser tests), firefox-esr (a Firefox partner, driven by npm's
# puppeteer-core), coturn (TURN relay), Caddy and nginx (the two documented reverse proxies),
# iproute2/nftables/iptables (network namespaces and faults), systemd (systemd-analyze checks
# deploy/telehealth.service), prometheus (its promtool checks the alert rules, and one test
# scrapes the server with it). Python packages go into .venv. Extra pytest arguments pass through.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(chromium firefox-esr coturn caddy nginx iproute2 nftables iptables procps systemd prometheus)
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  SUDO=""
  [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  echo "==> installing ${missing[*]}"
  # The tests run their own coturn, Caddy, nginx and Prometheus on free ports; the packages'
  # system services are not wanted, and Caddy and nginx would fight over port 80 at install.
  # Containers already refuse service starts with a policy-rc.d; elsewhere, refuse them here.
  policy=""
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    policy=/usr/sbin/policy-rc.d
    printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null && $SUDO chmod +x "$policy"
  fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  [ -z "$policy" ] || $SUDO rm -f "$policy"
fi
# Where services were started anyway (installed earlier), stop them.
systemctl stop coturn caddy nginx prometheus >/dev/null 2>&1 || true

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
echo "==> installing telehealth and test dependencies into .venv"
.venv/bin/pip install -q --upgrade pip
# The exact versions the suite was last run with, checked by hash (requirements.lock; to
# update it, see its first lines), then the project itself without resolving anything again.
# A regular (not editable) install: the tests check that the distribution is complete.
.venv/bin/pip install -q --require-hashes -r requirements.lock
.venv/bin/pip install -q --no-deps .

if [ -f package-lock.json ]; then
  echo "==> installing the npm packages (axe-core, puppeteer-core, TypeScript)"
  npm ci --no-audit --no-fund --silent
fi

mkdir -p test-artifacts
# Two phases: everything else on two workers (the browser suite on one of them), then the
# network-fault suite and the tests marked alone, by themselves, because they time how fast
# things are noticed and healed (or load the machine on purpose), and a
# second worker busy with browsers would blur those timings.
phase() {
  local rc=0
  # Native tracebacks: Python 3.11.7 can fail inside pytest's own AST-based traceback
  # formatting ("AST constructor recursion depth mismatch"), turning one failure into an internal
  # error that stops the whole run.
  .venv/bin/python -m pytest -p no:cacheprovider -q --tb=native "$@" || rc=$?
  # Exit 5 is "no test collected": fine when the caller's -k selected none of this phase.
  if [ "$rc" -eq 5 ] && [ "$USER_ARGS" -gt 0 ]; then rc=0; fi
  return "$rc"
}
USER_ARGS=$#
echo "==> running the tests (phase 1 of 2: two workers)"
# A crashed or timed-out worker ends the phase at once: pytest-xdist 3.8 replaces it, but under
# --dist loadgroup the replacement is never given work and the run waits forever (xdist #1378).
phase -n 2 --dist loadgroup --max-worker-restart 0 -m "not netns and not alone" "$@"
echo "==> running the tests (phase 2 of 2: network faults and other timing tests, alone)"
# One worker, not none: a test that hangs is ended by pytest-timeout with its worker, and the
# worker is replaced, so the tests after it still run.
phase -n 1 -m "netns or alone" "$@"
