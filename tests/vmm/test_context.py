"""Contextualization media carry arbitrary files, named as given."""

import pytest

from vmm.context import build_medium, read_medium
from vmm.errors import VMMError


def test_medium_round_trip(tmp_path):
    files = {
        "tsi/agent.conf": b'{"port": 4433}',
        "tsi/instance.key": b"-----BEGIN PRIVATE KEY-----\n",
        "tsi/deeper/dir/ca.pem": b"ca",
        "a-long-file-name.with.several.dots.json": b"x" * 70000,
        "empty": b"",
    }
    medium = build_medium(files, tmp_path / "ctx.iso")
    assert read_medium(medium) == files
    assert medium.stat().st_mode & 0o777 == 0o600
    assert medium.read_bytes()[0x8028:0x8028 + 6] == b"cidata"  # volume label


@pytest.mark.parametrize("name", ["/etc/passwd", "../escape", "a/../../b", "sp ace", "a//b", ""])
def test_bad_names_are_refused(tmp_path, name):
    with pytest.raises(VMMError, match="bad file name"):
        build_medium({name: b"x"}, tmp_path / "ctx.iso")
