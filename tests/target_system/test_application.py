"""The runner's command for an application job: the IDB entry matching found, through the
same lookup (``find_application``), so a job whose image matched never fails for want of it."""

import pytest

from image_repo.schema import validate
from target_system.jobdesc import JobDescriptionError, parse_job
from target_system.jobs import job_script, resolve_application
from tests.image_repo.examples import builder_document, variant

IMAGE = validate(variant(builder_document(), **{"idb.applications": [
    {"name": "python3", "version": "3.11.2", "executable": "/usr/bin/python3",
     "arguments": ["-u"], "environment": {"PYTHONHASHSEED": "0"}},
    {"name": "bash", "version": "5.2.15", "executable": "/bin/bash"}]}))


def command(doc, metadata=IMAGE):
    return resolve_application(parse_job(doc), metadata)


@pytest.mark.parametrize("version", [">=3.10", ">=3.10, <4", "~=3.11", "3.11", "3.11.2"])
def test_a_version_constraint_resolves_like_matching(version):
    assert command({"ApplicationName": "python3", "ApplicationVersion": version,
                    "Arguments": ["-c", "print(1)"]}) == (
        "/usr/bin/python3", ["-u", "-c", "print(1)"], {"PYTHONHASHSEED": "0"})


def test_the_script_runs_the_idb_executable():
    job = parse_job({"ApplicationName": "Python3", "ApplicationVersion": ">=3.10",
                     "Arguments": ["-V"]})
    assert "\n/usr/bin/python3 -u -V\n" in job_script(job, "/home/gridvm/jobs/j1", IMAGE)


@pytest.mark.parametrize(("doc", "words"), [
    ({"ApplicationName": "python3", "ApplicationVersion": ">=3.12"}, "python3 >=3.12"),
    ({"ApplicationName": "perl"}, "perl"),
])
def test_an_application_the_idb_lacks_names_it(doc, words):
    with pytest.raises(JobDescriptionError, match=f"{words} is not in the image's IDB") as err:
        command(doc)
    assert err.value.path == "ApplicationName"


def test_an_image_silent_about_its_idb_runs_the_application_by_name():
    silent = validate(variant(builder_document(), **{"idb.applications": []}))
    assert command({"ApplicationName": "python3", "ApplicationVersion": ">=3.10",
                    "Arguments": ["-V"]}, silent) == ("python3", ["-V"], {})


def test_an_explicit_executable_wins_and_plain_jobs_need_no_idb():
    assert command({"ApplicationName": "bash", "Executable": "/bin/sh"})[0] == "/bin/sh"
    assert command({"Executable": "/bin/date"}, None) == ("/bin/date", [], {})
