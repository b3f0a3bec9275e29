"""Registering an image over REST: MiB/s from ``POST images`` to the image being visible.

A whole site runs in-process (``tsf.service.start_site``: SQLite, a store in a temporary
directory below /var/tmp, HTTP on 127.0.0.1); the client is ``client.api.Site`` (what
``gridvm image register`` uses) in a thread, sending a kernel+initramfs image whose initrd is
``--mib`` MiB of random bytes.  Baseline, in the same run: ``ImageRepository.register`` of an
image of the same size from local files (copy and hash once, no network).  The ratio is REST
MiB/s divided by baseline MiB/s.  The last line is one JSON object.

    .venv/bin/python bench/image_upload.py [--mib 256]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet import defer, reactor, threads

from base.identity import Caller
from client.api import Site
from tests.image_repo.examples import builder_document
from tsf.config import config_from_dict
from tsf.service import start_site
from tsf.users import User, UsersFile, hash_password

BLOCK = 1 << 20


def random_file(path: Path, mib: int) -> tuple[str, int]:
    digest = hashlib.sha512()
    with path.open("wb") as out:
        for _ in range(mib):
            block = os.urandom(BLOCK)
            digest.update(block)
            out.write(block)
    return digest.hexdigest(), mib * BLOCK


def document(name: str, kernel: Path, initrd: Path) -> dict:
    doc = builder_document(name=name)
    for ref, path in zip(doc["origin"]["content"], (kernel, initrd), strict=True):
        ref["sha512"], ref["size"] = hashlib.sha512(path.read_bytes()).hexdigest(), \
            path.stat().st_size
    return doc


def upload(base: str, doc: dict, files: dict[str, Path]) -> float:
    site = Site(base, "bench", "bench-secret", timeout=600)
    started = time.perf_counter()
    pending = site.register_image(doc).json()
    for name in pending["missing"]:
        with files[name].open("rb") as stream:
            reply = site.upload_image_file(pending["files"][name]["href"], stream,
                                           files[name].stat().st_size)
    assert reply.status == 201, reply.body
    return time.perf_counter() - started


async def run(options, root: Path) -> dict:
    (root / "f").mkdir()
    kernel = root / "f" / "vmlinuz"
    kernel.write_bytes(b"kernel" * 1000)
    users = UsersFile(root / "users.json")
    users.put(User("bench", hash_password("bench-secret"), ("bench",), (), "creator"))
    config = config_from_dict({
        "site": {"name": "BENCH", "state_dir": str(root / "site"),
                 "domain_prefix": f"gridvm-bench-{root.name[-8:]}-", "keep_instances": False,
                 "users_file": str(root / "users.json")},
        "http": {"port": 0}, "https": {"port": -1},
        "limits": {"image_file_mib": options.mib + 1, "image_quota_mib": 0}})
    site = await start_site(config, reactor)
    try:
        initrd = root / "f" / "initrd.img"
        random_file(initrd, options.mib)
        doc = document("bench-rest", kernel, initrd)
        rest_s = await threads.deferToThread(upload, site.http_base, doc,
                                             {"vmlinuz": kernel, "initrd.img": initrd})
        random_file(initrd, options.mib)
        local = document("bench-local", kernel, initrd)
        started = time.perf_counter()
        await threads.deferToThread(site.repository.register, local,
                                    {"vmlinuz": kernel, "initrd.img": initrd},
                                    Caller.of("bench"))
        local_s = time.perf_counter() - started
    finally:
        await site.stopService()
    rest, local_rate = options.mib / rest_s, options.mib / local_s
    return {"mib": options.mib, "rest_mib_per_s": round(rest, 1),
            "baseline_register_mib_per_s": round(local_rate, 1),
            "ratio": round(rest / local_rate, 2)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mib", type=int, default=256)
    options = parser.parse_args()
    Path("/var/tmp/gridvm-bench").mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="upload-", dir="/var/tmp/gridvm-bench"))
    result: dict = {}

    def done(figures):
        result.update(figures)
        reactor.stop()

    def failed(failure):
        print(failure.getTraceback(), file=sys.stderr)
        reactor.stop()

    reactor.callWhenRunning(lambda: defer.ensureDeferred(run(options, root))
                            .addCallbacks(done, failed))
    try:
        reactor.run()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    if not result:
        return 1
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
