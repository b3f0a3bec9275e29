"""Fixtures for the tsi_bridge tests: agents as real subprocesses on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.local_agent import AgentProcess


@pytest.fixture
def start_agent(tmp_path):
    """``start_agent(*flags, name=..., config=...)`` starts an agent; all are stopped after."""
    agents: list[AgentProcess] = []

    def start(*flags: str, name: str = "agent", config: Path | None = None,
              privileged: bool = False) -> AgentProcess:
        agent = AgentProcess(tmp_path / name, *flags, config=config,
                             privileged=privileged).start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()


@pytest.fixture(scope="module")
def shared_agent(tmp_path_factory):
    """One plain agent shared by a module's tests."""
    agent = AgentProcess(tmp_path_factory.mktemp("shared")).start()
    yield agent
    agent.stop()


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tsi_certs import TestPKI

    return TestPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module", params=["plain", "tls"])
def endpoint(request, tmp_path_factory, pki):
    """A running agent and the TLSConfig to reach it (None for plain), plain and TLS."""
    flags = pki.agent_flags() if request.param == "tls" else []
    agent = AgentProcess(tmp_path_factory.mktemp(request.param), *flags).start()
    tls = pki.client_tls() if request.param == "tls" else None
    yield agent, tls
    agent.stop()
