#!/usr/bin/env bash
# Create/refresh the virtualenv, then run the main job (the demo of a supervised tree).
set -euo pipefail
source "$(dirname "$0")/_venv.sh" base ""
cd "$ROOT"
exec "$VENV/bin/python" -m actors demo "$@"
