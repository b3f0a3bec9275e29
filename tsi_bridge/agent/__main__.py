"""``python3 -m tsi_bridge.agent --config FILE [flags]``: run the gridvm TSI agent.

Flags override the config file (handy for development and tests); see docs/tsi-bridge.md.
``--await-identity PORT`` (a snapshot's template guest) waits on a virtio-serial port for the
identity of a restored instance, whose agent.conf it then runs from
(``tsi_bridge.agent.awaiting``).
``--properties FILE`` reads the official UNICORE TSI's ``tsi.properties`` instead, so the
agent can be started exactly as the official TSI is.
"""

from __future__ import annotations

import os
import signal
import sys

FLAGS = {
    "--listen-address": "listen_address", "--port": "listen_port",
    "--callback-host": "callback_host", "--callback-port": "callback_port",
    "--workdir-root": "workdir_root", "--state-dir": "state_dir", "--job-user": "job_user",
    "--job-group": "job_group", "--port-file": "port_file", "--log-level": "log_level",
    "--shell": "shell",
    "--tls-cert": "tls.cert", "--tls-key": "tls.key", "--tls-ca": "tls.ca",
    "--tls-peer-cert": "tls.peer_cert",
    "--handshake-timeout": "timeouts.handshake", "--idle-timeout": "timeouts.idle",
    "--request-timeout": "timeouts.request", "--transfer-timeout": "timeouts.transfer",
    "--script-timeout": "timeouts.script", "--abort-grace": "timeouts.abort_grace",
}
SWITCHES = {"--no-switch-uid": ("switch_uid", False), "--confine-paths": ("confine_paths", True),
            "--no-user-helpers": ("user_helpers", False)}
AWAIT = "await_identity"  #: not a config key: taken out before the config is loaded
USAGE = ("usage: python3 -m tsi_bridge.agent [--config FILE | --properties FILE | "
         "--await-identity PORT] "
         + " ".join(f"[{flag} V]" for flag in FLAGS) + " " + " ".join(f"[{s}]" for s in SWITCHES))


def parse(argv: list[str]) -> tuple[str | None, dict[str, object]]:
    """(config file, overrides); ``--properties FILE`` turns into overrides."""
    config_file, overrides = None, {}
    args = list(argv)
    while args:
        flag = args.pop(0)
        if flag in ("-h", "--help"):
            print(USAGE)
            sys.exit(0)
        if flag in SWITCHES:
            key, value = SWITCHES[flag]
            overrides[key] = value
            continue
        if "=" in flag:
            flag, value = flag.split("=", 1)
            args.insert(0, value)
        if flag not in FLAGS and flag not in ("--config", "--properties", "--await-identity"):
            raise SystemExit(f"gridvm-tsi: unknown argument {flag}\n{USAGE}")
        if not args:
            raise SystemExit(f"gridvm-tsi: {flag} needs a value")
        value = args.pop(0)
        if flag == "--config":
            config_file = value
        elif flag == "--await-identity":
            overrides[AWAIT] = value
        elif flag == "--properties":
            from tsi_bridge.agent.config import properties_values, read_properties

            overrides.update(properties_values(read_properties(value), dict(os.environ)))
        else:
            overrides[FLAGS[flag]] = value
    return config_file, overrides


def main(argv: list[str] | None = None) -> int:
    from tsi_bridge.agent import log
    from tsi_bridge.agent.config import Config, ConfigError

    try:
        config_file, overrides = parse(sys.argv[1:] if argv is None else argv)
        port = overrides.pop(AWAIT, None)
        awaited = steps = None
        if port is not None:
            config_file, *awaited, steps = await_identity(str(port))
        config = Config.load(config_file, overrides)
        if steps is not None:
            steps.done("config")
    except ConfigError as err:
        print(f"gridvm-tsi: configuration error: {err}", file=sys.stderr)
        return 2
    log.set_level(config.log_level)
    from tsi_bridge.agent.server import Agent

    try:
        agent = Agent(config)
        if steps is not None:
            steps.done("agent")
        agent.bind()
    except OSError as err:
        print(f"gridvm-tsi: cannot start: {err}", file=sys.stderr)
        return 1

    def stop(signum, frame):
        log.info(f"signal {signum}: stopping (running jobs keep running)")
        agent.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if awaited:  # a restored instance: the host waits for this before it connects
        from tsi_bridge.agent.awaiting import acknowledge

        acknowledge(*awaited)
        steps.done("bind and ack")
        log.info(f"identity taken: {steps}")
    agent.serve_forever()
    return 0


def await_identity(port: str) -> tuple[str, int, bytes, object]:
    """Import all the agent needs, then wait for a restored instance's identity; returns
    its agent.conf, the open port, the ack to send on it once the agent listens and the
    ``awaiting.Steps`` timed so far."""
    from tsi_bridge.agent import awaiting, server  # noqa: F401 - imported before the snapshot

    try:
        awaiting.warm_up()
        fd = awaiting.open_port(port)
        steps = awaiting.Steps()
        config_file, ack = awaiting.identity_from(fd, steps=steps)
        return config_file, fd, ack, steps
    except (OSError, awaiting.IdentityError) as err:
        print(f"gridvm-tsi: no identity: {err}", file=sys.stderr)
        raise SystemExit(1) from None


if __name__ == "__main__":
    sys.exit(main())
