"""UNICORE job descriptions: lenient values, strict keys, errors that name the key."""

import pytest

from target_system.jobdesc import (
    JobDescriptionError,
    parse_job,
    parse_memory,
    parse_runtime,
    requirement_sources,
)


def test_pyunicore_helper_style_description():
    job = parse_job({
        "Executable": "/bin/echo", "Arguments": ["hello", 42], "Job type": "normal",
        "Environment": {"A": "1"}, "Stdout": "stdout", "Stderr": "stderr",
        "IgnoreNonZeroExitCode": "true", "haveClientStageIn": "true",
        "Resources": {"Runtime": "10min", "Nodes": 1, "CPUs": 2, "Memory": "1G",
                      "Image": "gridvm-debian12-initramfs"},
        "Imports": [{"From": "inline://dummy", "To": "in.txt", "Data": "abc"}],
        "Tags": ["t1"],
    })
    assert job.executable == "/bin/echo" and job.arguments == ["hello", "42"]
    assert job.job_type == "BATCH" and job.ignore_nonzero_exit and job.client_stage_in
    assert job.runtime == 600 and job.cpus == 2 and job.memory == 1 << 30
    assert job.imports[0].to == "in.txt" and job.imports[0].data == b"abc"
    assert job.requirements.to_dict() == {"image": "gridvm-debian12-initramfs", "cpus": 2,
                                          "memory_mib": 1024, "runtime_s": 600}


def test_environment_list_form_and_application_requirements():
    job = parse_job({"ApplicationName": "python3", "ApplicationVersion": "3.11",
                     "Environment": ["A=1", "B=x=y"],
                     "Resources": {"OperatingSystem": "debian", "OperatingSystemVersion": "12",
                                   "CPUArchitecture": "x86_64", "TotalCPUs": "1"}})
    assert job.environment == {"A": "1", "B": "x=y"}
    assert job.requirements.to_dict() == {
        "os": {"distro": "debian", "version": "12"}, "architecture": "x86_64",
        "applications": [{"name": "python3", "version": "3.11"}], "cpus": 1}
    assert job.wanted_application.constraint.holds("3.11.2")


def test_container_application_selects_by_image_url():
    job = parse_job({"ApplicationName": "CONTAINER", "Parameters": {
        "IMAGE_URL": "gridvm-debian12-qcow2", "COMMAND": "python3 -V"}})
    assert job.requirements.to_dict() == {"container_image_url": "gridvm-debian12-qcow2"}
    assert job.wanted_application is None
    with pytest.raises(JobDescriptionError, match="IMAGE_URL"):
        parse_job({"ApplicationName": "CONTAINER"})


@pytest.mark.parametrize(("doc", "path"), [
    ({"Executable": "x", "Argumnets": []}, "Argumnets"),
    ({"Executable": "x", "resources": {}}, "resources"),
    ({"Executable": "x", "Resources": {"Runtim": 5}}, "Resources.Runtim"),
    ({"Executable": "x", "Resources": {"Runtime": "soon"}}, "Resources.Runtime"),
    ({"Executable": "x", "Resources": {"Memory": "lots"}}, "Resources.Memory"),
    ({"Executable": "x", "Resources": {"CPUs": 0}}, "Resources.CPUs"),
    ({"Executable": "x", "Resources": {"Nodes": 0}}, "Resources.Nodes"),
    ({"Executable": "x", "Arguments": "a b"}, "Arguments"),
    ({"Executable": "x", "Environment": ["NOEQUALS"]}, "Environment[0]"),
    ({"Executable": "x", "Environment": {"1BAD": "v"}}, "Environment.1BAD"),
    ({"Executable": "x", "Stdout": "../../etc/passwd"}, "Stdout"),
    ({"Executable": "x", "Imports": [{"To": "/abs", "Data": "x"}]}, "Imports[0].To"),
    ({"Executable": "x", "Imports": [{"From": "ftp://e.org/f", "To": "f"}]}, "Imports[0].From"),
    ({"Executable": "x", "IgnoreNonZeroExitCode": "maybe"}, "IgnoreNonZeroExitCode"),
    ({"Executable": "x", "Job type": "quantum"}, "Job type"),
    ({"Executable": "x", "Exports": [{"From": "a", "To": "ftp://e.org/a"}]}, "Exports[0].To"),
    ({"Arguments": []}, "Executable"),
    # image requirements are checked at submit, not when the job is matched
    ({"Executable": "x", "Resources": {"CPUArchitecture": "sparc9"}},
     "Resources.CPUArchitecture"),
    ({"Executable": "x", "Resources": {"OperatingSystemVersion": "banana"}},
     "Resources.OperatingSystemVersion"),
    ({"Executable": "x", "Resources": {"OperatingSystemVersion": "=>12"}},
     "Resources.OperatingSystemVersion"),
    ({"Executable": "x", "Resources": {"OperatingSystem": "Debian Linux"}},
     "Resources.OperatingSystem"),
    ({"Executable": "x", "Resources": {"Image": "a/b"}}, "Resources.Image"),
    ({"Executable": "x", "Resources": {"Runtime": "2sausages"}}, "Resources.Runtime"),
    ({"Executable": "x", "Resources": {"Runtime": "2months"}}, "Resources.Runtime"),
    ({"ApplicationName": "python 3"}, "ApplicationName"),
    ({"ApplicationName": "python3", "ApplicationVersion": "~>3"}, "ApplicationVersion"),
])
def test_bad_descriptions_name_the_key(doc, path):
    with pytest.raises(JobDescriptionError) as err:
        parse_job(doc)
    assert err.value.path == path
    assert str(err.value).startswith(path)
    assert err.value.reason == "BAD_REQUEST"


def test_a_near_miss_key_gets_a_hint():
    with pytest.raises(JobDescriptionError, match="did you mean 'Executable'"):
        parse_job({"executable": "x"})


def test_not_an_object():
    with pytest.raises(JobDescriptionError, match="JSON object"):
        parse_job(["Executable"])


@pytest.mark.parametrize(("value", "seconds"), [
    (3600, 3600), ("3600", 3600), ("10min", 600), ("10m", 600), ("2h", 7200), ("1d", 86400),
    ("1.5h", 5400), ("30s", 30), ("90sec", 90), (" 2 H ", 7200),
    # UNICORE: the unit is a prefix of seconds, minutes, hours or days
    ("2hours", 7200), ("5minutes", 300), ("3days", 3 * 86400), ("45seconds", 45),
])
def test_runtime_units(value, seconds):
    assert parse_runtime("R", value) == seconds


@pytest.mark.parametrize(("value", "size"), [
    (1024, 1024), ("512M", 512 << 20), ("1G", 1 << 30), ("2GiB", 2 << 30), ("100k", 102400),
])
def test_memory_units(value, size):
    assert parse_memory("M", value) == size


def test_imports_from_urls_and_other_jobs_are_kept_for_the_site_to_fetch():
    job = parse_job({"Executable": "cat", "Imports": [
        {"From": "https://data.example.org/a.txt", "To": "in/a.txt", "Permissions": "rwx"},
        {"From": "uspace://0123abcd/out/r.txt", "To": "r.txt", "FailOnError": "false"},
        {"From": "inline://dummy", "To": "b.txt", "Data": "b"}]})
    first, second, inline = job.imports
    assert (first.to, first.data, first.url, first.mode, first.fail_on_error) == (
        "in/a.txt", None, "https://data.example.org/a.txt", 0o700, True)
    assert (second.url, second.fail_on_error) == ("uspace://0123abcd/out/r.txt", False)
    assert (inline.data, inline.url) == (b"b", None)


@pytest.mark.parametrize(("item", "complaint"), [
    ({"From": "ftp://example.org/x", "To": "x"}, "unsupported source 'ftp://example.org/x'"),
    ({"From": "file:///etc/passwd", "To": "x"}, "unsupported source"),
    ({"From": "https://example.org/x", "To": "x", "Data": "y"}, "either From or Data"),
    ({"From": "https://example.org/x", "To": "../x"}, "inside the job directory"),
    ({"From": "https://example.org/x", "To": "x", "FailOnError": "maybe"}, "FailOnError"),
])
def test_bad_imports_name_the_problem(item, complaint):
    with pytest.raises(JobDescriptionError, match="Imports") as caught:
        parse_job({"Executable": "cat", "Imports": [item]})
    assert complaint in str(caught.value)


def test_exports_to_urls_are_kept_for_the_site_to_upload():
    job = parse_job({"Executable": "date", "Exports": [
        {"From": "out/result.txt", "To": "https://data.example.org/up/r.txt"},
        {"From": "stdout", "To": "http://127.0.0.1:9/x", "FailOnError": False}]})
    assert [(e.source, e.url, e.fail_on_error) for e in job.exports] == [
        ("out/result.txt", "https://data.example.org/up/r.txt", True),
        ("stdout", "http://127.0.0.1:9/x", False)]
    for bad, complaint in (({"From": "../x", "To": "https://e.org/x"}, "inside the job"),
                           ({"From": "x", "To": "/tmp/x"}, "unsupported target"),
                           ({"From": "x", "To": "https://e.org/x", "Mode": 1}, "Mode")):
        with pytest.raises(JobDescriptionError, match="Exports") as caught:
            parse_job({"Executable": "date", "Exports": [bad]})
        assert complaint in str(caught.value)


# -- validated text, bounded sizes and no silently ignored keys ------------------------------

@pytest.mark.parametrize("doc, path, complaint", [
    ({"Name": "two\nlines", "Executable": "/bin/true"}, "Name", "U+000A"),
    ({"Executable": "/bin/\udc80true"}, "Executable", "lone surrogate U+DC80"),
    ({"Executable": "/bin/true", "Arguments": ["a\x1b[2J"]}, "Arguments[0]", "U+001B"),
    ({"Executable": "/bin/true", "Environment": {"A": "x\x00y"}}, "Environment.A", "U+0000"),
    ({"Executable": "/bin/true", "Environment": ["A=\x7f"]}, "Environment[0]", "U+007F"),
    ({"Executable": "/bin/true", "Tags": ["t\r"]}, "Tags[0]", "U+000D"),
    ({"Executable": "/bin/true", "Name": "n" * 513}, "Name", "at most 512 characters"),
    ({"Executable": "/bin/true", "Arguments": ["a" * 65537]}, "Arguments[0]", "at most 65536"),
    ({"Executable": "/bin/true", "Imports": [{"To": "a", "Data": "\ud800"}]},
     "Imports[0].Data", "lone surrogate"),
    ({"Executable": "/bin/true", "User precommand": "echo\x00"}, "User precommand", "U+0000"),
])
def test_text_a_vm_cannot_be_given_is_refused_naming_the_key(doc, path, complaint):
    with pytest.raises(JobDescriptionError) as err:
        parse_job(doc)
    assert err.value.path == path and complaint in str(err.value)


def test_values_quoted_as_one_word_keep_their_line_breaks():
    """``python3 -c "<a script>"``: arguments, environment and parameter values are quoted
    as one shell word (``$'...'``), so line breaks in them are safe and kept."""
    script = "import os\nprint(os.getcwd())\r\n"
    job = parse_job({"Executable": "python3", "Arguments": ["-c", script],
                     "Environment": {"SCRIPT": script}, "Parameters": {"P": "a\nb"}})
    assert job.arguments == ["-c", script] and job.environment["SCRIPT"] == script
    assert job.parameters == {"P": "a\nb"}


def test_tabs_and_script_lines_are_text():
    job = parse_job({"Executable": "/bin/echo", "Arguments": ["a\tb"], "Name": "n" * 512,
                     "User precommand": "cd /tmp\nls\n"})
    assert job.arguments == ["a\tb"] and job.precommand == "cd /tmp\nls\n"


@pytest.mark.parametrize("key, value", [
    ("ArraySize", 10), ("ArrayLimit", 2), ("QoS", "high"), ("Reservation", "r1"),
    ("NodeConstraints", "gpu"), ("Exclusive", "true"), ("GPUsPerNode", 1),
    ("Queue", "gpu-nodes"), ("Queue", ["batch"]),
])
def test_batch_resources_a_vm_site_would_ignore_are_refused(key, value):
    with pytest.raises(JobDescriptionError) as err:
        parse_job({"Executable": "/bin/true", "Resources": {key: value}})
    assert err.value.path == f"Resources.{key}" and "not supported" in str(err.value)


def test_the_harmless_values_of_batch_resources_are_accepted():
    job = parse_job({"Executable": "/bin/true", "Resources": {
        "Queue": "batch", "Exclusive": False, "GPUsPerNode": "0", "Project": "p1"}})
    assert job.executable == "/bin/true"


@pytest.mark.parametrize("resources, path", [
    ({"CPUs": 2, "CPUsPerNode": 1000000000}, "Resources.CPUsPerNode"),
    ({"CPUs": 2, "CPUsPerNode": 3}, "Resources.CPUsPerNode"),
    ({"TotalCPUs": "2", "CPUsPerNode": "x"}, "Resources.CPUsPerNode"),
    ({"Memory": "1G", "MemoryPerNode": "2G"}, "Resources.MemoryPerNode"),
    ({"Nodes": 1000000000}, "Resources.Nodes"),
])
def test_every_size_given_is_read_and_one_node_has_one_size(resources, path):
    with pytest.raises(JobDescriptionError) as err:
        parse_job({"Executable": "/bin/true", "Resources": resources})
    assert err.value.path == path


@pytest.mark.parametrize("resources, cpus", [
    ({"Nodes": 3, "CPUsPerNode": 2}, 2), ({"Nodes": 3, "TotalCPUs": 6}, 2),
    ({"Nodes": 2, "CPUs": 4, "CPUsPerNode": 2}, 2), ({"Nodes": 2}, None),
])
def test_a_multi_node_job_sizes_each_node(resources, cpus):
    job = parse_job({"Executable": "/bin/true", "Resources": resources})
    assert job.nodes == resources["Nodes"] and job.cpus == cpus
    assert job.requirements.cpus == cpus
    if "CPUsPerNode" in resources:
        assert requirement_sources(job)["cpus"] == "Resources.CPUsPerNode"


@pytest.mark.parametrize("resources, path, complaint", [
    ({"Nodes": 2, "CPUs": 3}, "Resources.CPUs", "cannot be split evenly over 2 nodes"),
    ({"Nodes": 2, "TotalCPUs": 4, "CPUsPerNode": 1}, "Resources.TotalCPUs",
     "not Nodes x CPUsPerNode"),
    ({"Nodes": 2, "CPUs": 4, "TotalCPUs": 2}, "Resources.TotalCPUs", "disagrees"),
])
def test_a_multi_node_job_s_cpus_must_add_up(resources, path, complaint):
    with pytest.raises(JobDescriptionError) as err:
        parse_job({"Executable": "/bin/true", "Resources": resources})
    assert err.value.path == path and complaint in str(err.value)


def test_agreeing_sizes_are_one():
    job = parse_job({"Executable": "/bin/true", "Resources": {
        "CPUs": 2, "TotalCPUs": "2", "CPUsPerNode": 2, "Memory": "1G", "MemoryPerNode": 1 << 30}})
    assert job.cpus == 2 and job.memory == 1 << 30
