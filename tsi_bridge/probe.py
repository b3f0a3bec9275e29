"""The operators' probe: checks any TSI (ours or the official UNICORE TSI) end to end.

``python -m tsi_bridge probe --host H --port P [--tls --ca F --cert F --key F] [--workdir D]``

Steps: ping (includes creating a worker), mkdir, upload, submit a script that reads the
upload and writes an output, poll until done, read the exit code, read the output back,
clean up.  Each step prints its latency; the exit status is 0 only if every step passed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from twisted.internet import defer, task

from tsi_bridge.client import TSIClient
from tsi_bridge.errors import TSIError
from tsi_bridge.tls import TLSConfig

SCRIPT = ('read line < input.txt\n'
          'echo "probe read: $line" > output.txt\n'
          'echo $? > UNICORE_SCRIPT_EXIT_CODE\n')


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tsi_bridge probe",
                                     description="Check a UNICORE TSI end to end.")
    parser.add_argument("--host", required=True, help="TSI (shepherd) host")
    parser.add_argument("--port", required=True, type=int, help="TSI (shepherd) port")
    parser.add_argument("--tls", action="store_true", help="use mutual TLS")
    parser.add_argument("--ca", help="CA certificate(s) to trust (PEM)")
    parser.add_argument("--cert", help="our certificate (PEM)")
    parser.add_argument("--key", help="our private key (PEM)")
    parser.add_argument("--peer-cert", help="pin the TSI to exactly this certificate (PEM)")
    parser.add_argument("--workdir", default="/tmp", help="where to create the probe directory")
    parser.add_argument("--user", default="nobody", help="#TSI_IDENTITY user")
    parser.add_argument("--groups", default="NONE", help="#TSI_IDENTITY groups")
    parser.add_argument("--callback-host", default="127.0.0.1",
                        help="address to listen on for the TSI's callbacks")
    parser.add_argument("--callback-port", type=int, default=0,
                        help="port for the callbacks (0: any free port); must be the official "
                             "TSI's tsi.unicorex_port if that is set")
    parser.add_argument("--timeout", type=float, default=60.0,
                        help="deadline per step and for the job, seconds")
    parser.add_argument("--keep", action="store_true", help="keep the probe directory")
    return parser


class Steps:
    def __init__(self, out) -> None:
        self.out = out
        self.failed = False

    async def run(self, name: str, action, describe=lambda result: ""):
        started = time.perf_counter()
        try:
            result = await action()
        except (TSIError, ValueError, OSError) as err:
            self._line("FAIL", name, started, str(err))
            self.failed = True
            raise
        self._line("ok", name, started, describe(result))
        return result

    def _line(self, status: str, name: str, started: float, detail: str) -> None:
        elapsed = (time.perf_counter() - started) * 1000
        print(f"{status:>4}  {name:<12} {elapsed:9.1f} ms  {detail}".rstrip(), file=self.out,
              flush=True)


async def probe(reactor, args: argparse.Namespace, out=sys.stdout) -> int:
    tls = None
    if args.tls:
        tls = TLSConfig.from_files(args.cert, args.key, args.ca, args.peer_cert)
    client = TSIClient(reactor, args.host, args.port, tls=tls, user=args.user,
                       groups=args.groups, callback_host=args.callback_host,
                       callback_port=args.callback_port, pool_size=1,
                       request_timeout=args.timeout, callback_timeout=min(args.timeout, 15))
    steps = Steps(out)
    directory = f"{args.workdir.rstrip('/')}/gridvm-probe-{os.getpid()}-{int(time.time())}"
    content = f"hello from the gridvm probe {time.time():.0f}"
    try:
        await steps.run("ping", client.ping, lambda version: f"TSI version {version}")
        await steps.run("mkdir", lambda: client.execute_script(f"mkdir -p '{directory}'"),
                        lambda _r: directory)
        await steps.run("upload", lambda: client.write_file(f"{directory}/input.txt",
                                                             content.encode() + b"\n"),
                        lambda _r: f"{len(content) + 1} bytes")
        bssid = await steps.run("submit", lambda: client.submit(
            SCRIPT, uspace_dir=directory, job_name="gridvm-probe", runtime=int(args.timeout)),
            lambda job: f"job {job}")
        await steps.run("wait", lambda: client.wait_for_job(bssid, 0.2, args.timeout),
                        lambda _r: "job finished")
        code = await steps.run("exit code", lambda: client.exit_code(directory, grace=10,
                                                                     poll_interval=0.5),
                               lambda c: f"{c}")
        if code != 0:
            steps._line("FAIL", "exit code", time.perf_counter(), f"expected 0, got {code}")
            steps.failed = True
        output = await steps.run("read output", lambda: client.read_file(
            f"{directory}/output.txt"), lambda data: f"{len(data)} bytes")
        if output.decode(errors="replace").strip() != f"probe read: {content}":
            steps._line("FAIL", "compare", time.perf_counter(), f"unexpected {output[:80]!r}")
            steps.failed = True
        if not args.keep:
            await steps.run("cleanup", lambda: client.execute_script(f"rm -rf '{directory}'"))
    except (TSIError, ValueError, OSError) as err:
        print(f"probe failed: {err}", file=sys.stderr)
        steps.failed = True
    finally:
        await client.close()
    print("probe: all steps passed" if not steps.failed else "probe: FAILED", file=out)
    return 1 if steps.failed else 0


def main(argv: list[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.tls and not (args.ca and args.cert and args.key):
        parser.error("--tls needs --ca, --cert and --key")
    for path in (args.ca, args.cert, args.key, args.peer_cert):
        if path and not os.path.isfile(path):
            parser.error(f"no such file: {path}")
    result = []

    async def run(reactor):
        result.append(await probe(reactor, args))

    try:
        task.react(lambda reactor: defer.Deferred.fromCoroutine(run(reactor)))
    except SystemExit as exit_:
        if exit_.code not in (0, None):
            return int(exit_.code)
    return result[0] if result else 1
