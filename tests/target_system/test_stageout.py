"""The site side of a streamed stage-out: a hostile archive cannot leave the job directory."""

import io
import os
import tarfile

from target_system.stageout import extract_archive


def member(tar: tarfile.TarFile, name: str, kind: bytes = tarfile.REGTYPE, data: bytes = b"",
           linkname: str = "", mode: int = 0o644) -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode, info.size = kind, linkname, mode, len(data)
    tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)


def test_only_members_inside_the_job_directory_are_kept(tmp_path):
    archive = tmp_path / "job.tar"
    with tarfile.open(archive, "w", format=tarfile.PAX_FORMAT) as tar:
        member(tar, "ok.txt", data=b"fine\n")
        member(tar, "../escaped.txt", data=b"out\n")
        member(tar, "/abs.txt", data=b"abs\n")
        member(tar, "up", tarfile.SYMTYPE, linkname="../../etc")
        member(tar, "rooted", tarfile.SYMTYPE, linkname="/etc")
        member(tar, "hard", tarfile.LNKTYPE, linkname="/etc/passwd")
        member(tar, "null", tarfile.CHRTYPE)
        member(tar, "setuid", data=b"#!/bin/sh\n", mode=0o4755)
        member(tar, "inner", tarfile.SYMTYPE, linkname="ok.txt")
        member(tar, "inner/through", data=b"via a link\n")  # writes through an inner link
        member(tar, "sub/after.txt", data=b"kept after the refusals\n")
    storage = tmp_path / "jobs" / "job"
    storage.mkdir(parents=True)
    (storage / "ok.txt").symlink_to("/etc/hostname")  # left by an earlier run: replaced

    result = extract_archive(archive, storage)

    assert (storage / "ok.txt").read_bytes() == b"fine\n" and not (storage / "ok.txt").is_symlink()
    assert (storage / "sub/after.txt").read_bytes() == b"kept after the refusals\n"
    assert os.readlink(storage / "inner") == "ok.txt"
    assert stat_mode(storage / "setuid") & 0o7000 == 0
    assert (storage / "abs.txt").read_bytes() == b"abs\n"  # the filter strips the leading /
    for name in ("up", "rooted", "hard", "null"):
        assert not os.path.lexists(storage / name)
    assert not (tmp_path / "jobs" / "escaped.txt").exists()
    assert sorted(os.listdir(tmp_path / "jobs")) == ["job"]
    refused = " ".join(result.notes)
    for name in ("../escaped.txt", "up", "rooted", "hard", "null", "inner/through"):
        assert f"not kept: {name} " in refused
    assert result.files == 4


def stat_mode(path) -> int:
    return os.stat(path).st_mode
