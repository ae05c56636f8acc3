#!/usr/bin/env bash
# Installs the Python tools the server's tests run against, pinned, each set in a virtualenv of
# its own (idempotent, see setup-pyvenv.sh):
# - moto's S3-compatible server (agent-server/tests/s3_artifacts.rs) and schemathesis
#   (agent-server/tests/openapi_conformance.rs);
# - the official MCP Python SDK, the MCP tests' client (agent-server/tests/mcp_e2e.rs), apart
#   because its dependencies move on their own.
#
#   AGENT_TEST_TOOLS_VENV   where to put the first (default /opt/containerized-agent/test-tools-venv);
#   AGENT_MCP_VENV          the MCP SDK's (default /opt/containerized-agent/mcp-venv);
#                           the tests read the same variables.
set -euo pipefail
here="$(dirname "$0")"
"$here/setup-pyvenv.sh" "${AGENT_TEST_TOOLS_VENV:-/opt/containerized-agent/test-tools-venv}" \
  "moto[server]==5.2.5" "schemathesis==4.32.5"
"$here/setup-pyvenv.sh" "${AGENT_MCP_VENV:-/opt/containerized-agent/mcp-venv}" "mcp==2.3.0"
