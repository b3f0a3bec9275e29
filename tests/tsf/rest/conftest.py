"""A whole REST site in-process (``tsf.service.start_site``): real libvirt, real sockets.

Images: the initramfs test image is visible to every user; the qcow2 test image is registered
as a private image of VO ``secret`` (owner ``creator``), so the users here must never see it.
Clients run in threads (pyunicore and httpx are blocking; the reactor serves meanwhile).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import http.client
import json
import shutil
import uuid
from urllib.parse import urlsplit

import httpx
import pytest_twisted
from twisted.internet import reactor, threads

from base.identity import Caller
from tests.conftest import TEST_ROOT
from tsf.config import config_from_dict
from tsf.service import start_site
from tsf.users import User, UsersFile, hash_password
from vmm.hypervisor import Hypervisor

PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret", "root": "root-secret",
             "carol": "carol-secret", "dave": "dave-secret"}
PUBLIC = "gridvm-debian12-initramfs"
HIDDEN = "gridvm-debian12-qcow2"
CREATOR = Caller.of("creator", groups=["images"])


def write_users(path) -> None:
    users = UsersFile(path)
    users.put(User("alice", hash_password(PASSWORDS["alice"]), ("users",), ("demo",)))
    users.put(User("bob", hash_password(PASSWORDS["bob"]), ("users",), ("demo",)))
    users.put(User("root", hash_password(PASSWORDS["root"]), ("admins",), (), "admin"))
    users.put(User("carol", hash_password(PASSWORDS["carol"]), ("images",), ("demo",),
                   "creator"))
    users.put(User("dave", hash_password(PASSWORDS["dave"]), ("images",), ("demo",),
                   "creator"))


def register_images(repository, built_images) -> None:
    for kind, built in built_images.items():
        metadata = copy.deepcopy(built.metadata)
        if kind == "qcow2":
            metadata["general"]["permissions"] = {"owner": "rw", "group": "", "others": ""}
            metadata.setdefault("semantic", {})["vos"] = ["secret"]
        files = {ref["file"]: built.directory / ref["file"]
                 for ref in metadata["origin"]["content"]}
        repository.register(metadata, files, CREATOR)


class Http:
    """A blocking httpx client run in a thread, against BASE."""

    def __init__(self, base: str):
        self.base = base

    def call(self, method: str, path: str = "", *, user: str | None = "alice",
             auth=None, **kwargs) -> httpx.Response:
        if auth is None and user is not None:
            auth = (user, PASSWORDS[user])
        url = path if path.startswith("http") else self.base + (f"/{path}" if path else "")
        with httpx.Client(verify=False, timeout=60) as client:
            return client.request(method, url, auth=auth, **kwargs)

    def __call__(self, method: str, path: str = "", **kwargs):
        return threads.deferToThread(self.call, method, path, **kwargs)

    def raw(self, method: str, url: str, body: bytes = b"", user: str = "alice"):
        """A request with the path exactly as given (no client-side normalisation);
        fires with (status, decoded JSON body)."""
        def send():
            parts = urlsplit(url)
            connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            token = base64.b64encode(f"{user}:{PASSWORDS[user]}".encode()).decode()
            connection.request(method, parts.path, body=body,
                               headers={"Authorization": f"Basic {token}",
                                        "Accept": "application/json"})
            answer = connection.getresponse()
            result = answer.status, json.loads(answer.read() or b"null")
            connection.close()
            return result

        return threads.deferToThread(send)


def site_config(root, **overrides):
    doc = {
        "site": {"name": "TESTSITE", "state_dir": str(root),
                 "domain_prefix": f"gridvm-test-rest-{root.name[-8:]}-",
                 "keep_instances": False},
        "http": {"port": 0}, "https": {"port": 0},
        "quotas": {"per_user": 2, "total": 4},
        "deadlines": {"staging": 120, "booting": 120, "connecting": 60},
        "health": {"interval": 5, "idle_timeout": 0},
        "limits": {"max_json_kib": 64, "max_upload_mib": 8},
        # restores are tested on their own (tests/tsf/rest/test_restore.py): here the
        # instances boot, and no snapshot is built in the background beside each test
        "fast_start": {"restore": False},
    }
    for section, values in overrides.items():
        doc.setdefault(section, {}).update(values)
    return config_from_dict(doc)


@contextlib.asynccontextmanager
async def running_site(built_images, **overrides):
    """(service, Http for BASE over http) of a site configured by ``site_config(root,
    **overrides)``; the service tree is stopped and its domains destroyed afterwards."""
    root = TEST_ROOT / f"rest-{uuid.uuid4().hex[:8]}"
    root.mkdir(parents=True)
    write_users(root / "users.json")
    site = await start_site(site_config(root, **overrides), reactor)
    try:
        await threads.deferToThread(register_images, site.repository, built_images)
        site.factory.runner.poll_interval = 0.5
        yield site, Http(site.http_base)
    finally:
        await site.stopService()
        hypervisor = Hypervisor(site.config.site.libvirt_uri, reactor)
        await hypervisor.connect()
        for name, _config, _state in await hypervisor.list_domains(site.config.site.domain_prefix):
            await hypervisor.destroy(name)
        await hypervisor.close()
        shutil.rmtree(root, ignore_errors=True)


@pytest_twisted.async_yield_fixture(scope="module")
async def rest_site(built_images):
    """(service, Http for BASE over http); the service tree is stopped afterwards."""
    async with running_site(built_images) as pair:
        yield pair


@pytest_twisted.async_yield_fixture(scope="module")
async def creators_site():
    """(service, Http for BASE over http) of a site without VM images, for creators' tests:
    other uploads at most 1 MiB, one image file at most 2 MiB, 3 MiB of images per user."""
    async with running_site({}, limits={"max_upload_mib": 1, "image_file_mib": 2,
                                        "image_quota_mib": 3}) as pair:
        yield pair
