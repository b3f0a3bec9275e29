"""Console logs kept after their instance's directory goes, bounded in size and number."""

import os

from vmm.consoles import ConsoleKeeper


def test_kept_after_the_directory_goes_bounded_in_bytes_and_count(tmp_path):
    keeper = ConsoleKeeper(tmp_path / "consoles", max_bytes=10, max_logs=2)
    live = tmp_path / "i1" / "console.log"
    live.parent.mkdir()
    live.write_bytes(b"0123456789abcdef")
    assert keeper.read("i1", live) == b"6789abcdef"  # the live log's end
    keeper.keep("i1", live)
    live.unlink()
    assert keeper.read("i1", live) == b"6789abcdef"  # kept after the instance ended
    for n, name in enumerate(("i2", "i3")):
        other = tmp_path / f"{name}.console"
        other.write_bytes(name.encode())
        keeper.keep(name, other)
        os.utime(tmp_path / "consoles" / f"{name}.log", (2e9 + n, 2e9 + n))
    assert keeper.read("i1", live) is None  # the oldest went
    assert keeper.read("i3", live) == b"i3"
    assert keeper.read("../etc/passwd", tmp_path / "nothing") is None
