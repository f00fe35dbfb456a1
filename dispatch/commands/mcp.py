"""`dispatch mcp`: the MCP server on stdin/stdout, for agent CLIs (`claude mcp add dispatch --
dispatch mcp`). The SDK and the server module load only when this command runs."""

from __future__ import annotations

import click

from dispatch.cli import App, pass_app


@click.command()
@pass_app
def mcp(app: App) -> int:
    """Serve dispatch's tools to an agent over MCP (stdio).

    Tools: dispatch_send, dispatch_wait, dispatch_result, dispatch_status. Needs the MCP
    Python SDK: without it, says how to install it."""
    from dispatch.mcp import sdk

    sdk.load_sdk()
    from dispatch.mcp import server as mcp_server

    mcp_server.serve(app.node())
    return 0


COMMANDS = [mcp]
