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

# -- temporary: files other engineers were editing when the checks came in -------------------
# Their findings are printed but do not fail the run; the coordinator fixes them after the
# merge and then empties this list (issue 15). pyproject.toml holds the same list for ruff
# and mypy.
TOLERATED_JS=(quality stats plan fallback session call therapist partner peers netcheck check)
# -- end of the temporary list ----------------------------------------------------------------

status=0
echo "==> ruff"
.venv/bin/ruff check "${PACKAGES[@]}" tests bench || status=1
echo "==> mypy"
.venv/bin/mypy "${PACKAGES[@]}" || status=1
echo "==> tsc --checkJs"
tolerated="^web/static/($(IFS='|'; echo "${TOLERATED_JS[*]}"))\.js\("
rc=0
out=$(node_modules/.bin/tsc -p tsconfig.json --pretty false) || rc=$?
# Indented lines continue the finding above them.
findings=$(printf '%s\n' "$out" | grep -E '^[^[:space:]]' || true)
blocking=$(printf '%s\n' "$findings" | grep -Ev "$tolerated" || true)
known=$(printf '%s\n' "$findings" | grep -Ec "$tolerated" || true)
[ "$known" -eq 0 ] || echo "tsc: $known finding(s) in files on the temporary list (not failing)"
if [ -n "$blocking" ]; then
  printf '%s\n' "$blocking"
  status=1
elif [ "$rc" -ne 0 ] && [ "$known" -eq 0 ]; then
  echo "tsc failed without a finding (exit $rc)"
  status=1
fi
exit $status
