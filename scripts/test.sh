#!/usr/bin/env bash
# Create/refresh the virtualenv with the test extra, then run the whole test suite.
set -euo pipefail
source "$(dirname "$0")/_venv.sh" test "[test]"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest "$@"
