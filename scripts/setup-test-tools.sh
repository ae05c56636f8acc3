#!/usr/bin/env bash
# Installs the Python tools the server's tests run against, pinned, into one virtualenv:
# moto's S3-compatible server (agent-server/tests/s3_artifacts.rs) and schemathesis
# (agent-server/tests/openapi_conformance.rs). Idempotent (see setup-pyvenv.sh).
#
#   AGENT_TEST_TOOLS_VENV   where to put it (default /opt/containerized-agent/test-tools-venv);
#                           the tests read the same variable.
set -euo pipefail
venv="${AGENT_TEST_TOOLS_VENV:-/opt/containerized-agent/test-tools-venv}"
exec "$(dirname "$0")/setup-pyvenv.sh" "$venv" "moto[server]==5.2.5" "schemathesis==4.32.5"
