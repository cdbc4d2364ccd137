#!/usr/bin/env bash
# Lint: ruff's pyflakes and import-order checks, and its formatter in check mode ([tool.ruff] in pyproject.toml).
# Changes nothing; exits non-zero on a finding. `.ci/run` calls it; run it by hand before a commit.
set -euo pipefail
cd "$(dirname "$0")/.."
RUFF="${RUFF:-.venv/bin/ruff}"
if ! command -v "$RUFF" >/dev/null; then
  echo "lint: no ruff at $RUFF (make test installs it with the test extra, or set RUFF=)" >&2
  exit 2
fi
status=0
"$RUFF" check . || status=1
"$RUFF" format --check . || status=1
exit "$status"
