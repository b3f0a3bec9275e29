"""The ``gridvm`` command's contract: help works, bad usage exits 2 with a one-line reason,
the former local ``gridvm image`` forms name their new command, and the entry package is
the console script that nothing else imports."""

import argparse
import subprocess
import sys
import tomllib

import pytest

from gridvm import catalogue
from gridvm.cli import build_parser, main
from tests.support.imports import GRIDVM_PACKAGES, REPO, gridvm_imports


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "gridvm", *args],
                          capture_output=True, text=True, timeout=60)


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    [action] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_help_lists_command_groups():
    result = run("--help")
    assert result.returncode == 0
    listed = {line.split()[0] for line in result.stdout.splitlines()
              if line.startswith("    ") and line.split()}
    assert {"image", "catalogue", "serve", "demo", "submit", "completion"} <= listed


def test_unknown_command_exits_2():
    result = run("no-such-command")
    assert result.returncode == 2
    assert "invalid choice" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_former_local_image_form_names_its_new_command():
    result = run("image", "register", "metadata.json", "--db", "sqlite:///x.sqlite")
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        "gridvm: `gridvm image register` moved: use `gridvm catalogue register` "
        "(local image work; a site's images: `gridvm image --help`)"]


@pytest.mark.parametrize("verb", sorted(catalogue.FORMER_IMAGE_VERBS))
def test_every_former_local_image_form_is_refused_in_one_line(verb, capsys):
    assert main(["-v", "image", verb, "--db", "sqlite:///x.sqlite", "--json"]) == 2
    assert capsys.readouterr().err == (
        f"gridvm: `gridvm image {verb}` moved: use `gridvm catalogue {verb}` "
        "(local image work; a site's images: `gridvm image --help`)\n")


def test_former_image_verbs_are_catalogue_verbs_and_some_site_verbs():
    commands = subcommands(build_parser())
    assert set(subcommands(commands["catalogue"])) >= catalogue.FORMER_IMAGE_VERBS
    site_verbs = set(subcommands(commands["image"]))
    assert site_verbs == {"search", "app", "activate", "export", "import",
                          *catalogue.SITE_IMAGE_VERBS}
    for verb in catalogue.FORMER_IMAGE_VERBS - site_verbs:
        assert main(["image", verb]) == 2


def test_console_script_is_the_entry_package():
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert project["scripts"] == {"gridvm": "gridvm.cli:main"}


def test_no_package_imports_the_entry_package():
    importers = {package: modules for package in sorted(GRIDVM_PACKAGES - {"gridvm"})
                 if (modules := [m for m, others in gridvm_imports(package).items()
                                 if "gridvm" in others])}
    assert importers == {}
