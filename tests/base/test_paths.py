"""Where local state lives: $GRIDVM_HOME, else /var/lib/gridvm for root, else the user's
~/.local/share/gridvm."""

from pathlib import Path

from base import paths


def test_gridvm_home_wins_for_everyone(monkeypatch, tmp_path):
    monkeypatch.setenv("GRIDVM_HOME", str(tmp_path / "home"))
    for euid in (0, 1000):
        monkeypatch.setattr(paths.os, "geteuid", lambda euid=euid: euid)
        assert paths.gridvm_home() == tmp_path / "home"


def test_root_without_gridvm_home_uses_var_lib(monkeypatch):
    monkeypatch.setenv("GRIDVM_HOME", "")  # empty counts as unset
    monkeypatch.setattr(paths.os, "geteuid", lambda: 0)
    assert paths.gridvm_home() == Path("/var/lib/gridvm")


def test_a_user_without_gridvm_home_uses_the_xdg_data_directory(monkeypatch, tmp_path):
    monkeypatch.delenv("GRIDVM_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setattr(paths.os, "geteuid", lambda: 1000)
    assert paths.gridvm_home() == tmp_path / ".local" / "share" / "gridvm"
