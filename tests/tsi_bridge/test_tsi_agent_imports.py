"""The guest contract: the agent imports only the standard library (and ssl only for TLS)."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.support.local_agent import REPO

PROBE = """
import json, sys
before = set(sys.modules)
import tsi_bridge, tsi_bridge.agent.__main__, tsi_bridge.agent.server
print(json.dumps(sorted(set(sys.modules) - before)))
"""


def imported_by_agent() -> list[str]:
    result = subprocess.run([sys.executable, "-S", "-c", PROBE], capture_output=True,
                            text=True, check=True, env={"PYTHONPATH": str(REPO)}, timeout=60)
    return json.loads(result.stdout)


def test_agent_import_closure_is_standard_library_only():
    modules = imported_by_agent()
    foreign = [m for m in modules if m.split(".")[0] not in sys.stdlib_module_names
               and m.split(".")[0] != "tsi_bridge"]
    assert foreign == []
    ours = {m for m in modules if m.startswith("tsi_bridge")}
    assert ours <= {"tsi_bridge", "tsi_bridge.protocol", "tsi_bridge.agent",
                    "tsi_bridge.agent.__main__", "tsi_bridge.agent.server",
                    "tsi_bridge.agent.config", "tsi_bridge.agent.log",
                    "tsi_bridge.agent.identity", "tsi_bridge.agent.jobs",
                    "tsi_bridge.agent.worker", "tsi_bridge.agent.files",
                    "tsi_bridge.agent.archive", "tsi_bridge.agent.helpers",
                    "tsi_bridge.agent.launcher"}
    assert "ssl" not in modules and "asyncio" not in modules and "logging" not in modules


def test_package_init_imports_nothing():
    text = (REPO / "tsi_bridge" / "__init__.py").read_text()
    assert "import" not in text
