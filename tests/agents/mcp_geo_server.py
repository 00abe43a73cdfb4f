"""A real MCP server (the official SDK's) over stdio for tests/agents/test_mcp.py.

One tool, whose every call is logged to the file named by PERDURE_MCP_CALLS.
"""

from __future__ import annotations

import os

from mcp.server.mcpserver import MCPServer

server = MCPServer("geo", instructions="Answer geography questions with the capital tool.")


@server.tool()
def capital(country: str) -> str:
    """The capital of a country."""
    with open(os.environ["PERDURE_MCP_CALLS"], "a") as log:  # one line per call that really ran
        log.write(country + "\n")
    return "Mexico City"


if __name__ == "__main__":
    server.run()  # stdio
