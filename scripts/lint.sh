#!/usr/bin/env bash
# Static checks, run by .ci/run before the tests: ruff and mypy over the Python packages,
# and TypeScript's checker over the pages' JavaScript (its JSDoc types; nothing is emitted).
# Installs its own tools on a fresh machine: ruff and mypy into .venv (the lint extra, pinned
# in requirements.lock), TypeScript from package-lock.json.
set -euo pipefail
cd "$(dirname "$0")/.."

PACKAGES=(telehealth signaling fallback media web)

if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
echo "==> installing the checkers into .venv"
# requirements.lock holds the lint extra too: the checkers and, for mypy, every dependency.
.venv/bin/pip install -q --require-hashes -r requirements.lock
if [ ! -x node_modules/.bin/tsc ]; then
  echo "==> installing TypeScript (npm)"
  npm ci --no-audit --no-fund --silent
fi

status=0
echo "==> ruff"
.venv/bin/ruff check "${PACKAGES[@]}" tests bench || status=1
echo "==> mypy"
.venv/bin/mypy "${PACKAGES[@]}" || status=1
echo "==> tsc --checkJs"
node_modules/.bin/tsc -p tsconfig.json --pretty false || status=1
exit $status
