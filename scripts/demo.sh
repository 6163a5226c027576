#!/usr/bin/env bash
# The main job on the bundled example: run examples/docker twice. The first
# run builds the base image (once per machine), boots a VM, installs Docker
# and builds the service; the second run restores nothing and executes
# nothing: every step is reused.
set -euo pipefail
cd "$(dirname "$0")/.."
strata=./bin/strata

echo "== first run (cold: builds the base image if needed, then every step runs)"
$strata run examples/docker
echo
echo "== second run (nothing changed: every step is reused)"
$strata run examples/docker
echo
echo "== why each step ran or was reused"
$strata explain examples/docker
