"""Finding the MCP SDK. Neither Debian nor Fedora packages it, and their Python refuses
`pip install` (PEP 668), so for the distribution's dispatch it goes into a venv of its own,
SDK_VENV, made with --system-site-packages so that it also sees dispatch and its
dependencies; `dispatch mcp` then runs itself there. Where dispatch came from pip, the extra
(`pip install 'dispatch[mcp]'`) puts the SDK beside it."""

from __future__ import annotations

import os
import sys

from dispatch.core import runner
from dispatch.core.errors import UsageError

# pyproject.toml's `mcp` extra says the same (a test checks).
SDK_REQUIREMENT = "mcp>=2,<3"
SDK_VENV = "/usr/local/lib/dispatch-mcp"
SDK_HINT = (
    f"python3 -m venv --system-site-packages {SDK_VENV} && "
    f"{SDK_VENV}/bin/pip install '{SDK_REQUIREMENT}'"
)


def load_sdk() -> None:
    """Run in SDK_VENV when this Python lacks the SDK and that venv exists; else fail with one
    line (exit 2) that says how to make it."""
    try:
        import mcp.server.mcpserver  # noqa: F401
    except ImportError as exc:
        venv_python = os.path.join(SDK_VENV, "bin", "python3")
        in_venv = os.path.realpath(sys.prefix) == os.path.realpath(SDK_VENV)
        if not in_venv and os.access(venv_python, os.X_OK):
            runner.replace_with(runner.module_argv("dispatch", *sys.argv[1:], python=venv_python))
        raise UsageError(
            f"dispatch mcp needs the MCP Python SDK ({exc}); install it as root with: {SDK_HINT}"
            " (Debian and Ubuntu: apt install python3-venv first; where dispatch itself came"
            " from pip: pip install 'dispatch[mcp]')"
        ) from None
