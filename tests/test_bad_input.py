"""Bad input: one clear line on stderr, a non-zero exit, no traceback, nothing lost."""

from __future__ import annotations

import re

import pytest

from nexus_jupyter import InvalidArgument, SandboxNotFound, SandboxStateError


def create(nexus) -> str:
    result = nexus("sandbox", "create", "victim", "--json")
    assert result.returncode == 0, result
    return result.json()["sandbox_id"]


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode != 0, result
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result
    assert lines[0].startswith("Error: "), result
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], result


def assert_store_intact(nexus, sandbox: str) -> None:
    assert nexus("sandbox", "status", sandbox, "--json").json()["status"] == "active"
    assert nexus("sandbox", "run", sandbox, "-c", "print('still fine')").stdout == "still fine\n"


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["sandbox", "run", "sb_doesnotexist", "-c", "print(1)"], "Sandbox not found: sb_doesnotexist"),
        (["sandbox", "status", "sb_doesnotexist"], "Sandbox not found"),
        (["sandbox", "pause", "sb_doesnotexist"], "Sandbox not found"),
        (["sandbox", "resume", "sb_doesnotexist"], "Sandbox not found"),
        (["sandbox", "stop", "sb_doesnotexist"], "Sandbox not found"),
        (["sandbox", "create", "x", "--ttl", "0"], "ttl_minutes"),
        (["sandbox", "create", "x", "--ttl", "-5"], "ttl_minutes"),
        (["sandbox", "create", "x", "--ttl", "abc"], "is not a valid integer"),
        (["sandbox", "create", "x", "--provider", "nosuch"], "unknown provider 'nosuch'"),
        (["sandbox", "create", "x", "--env", "NOEQUALS"], "KEY=VALUE"),
        (["sandbox", "create", "x", "--memory", "1"], "memory_mb"),
        (["sandbox", "list", "--user-id", "somebody-else"], "only admins"),
        (["sandbox", "frobnicate"], "No such command"),
    ],
)
def test_errors_without_a_sandbox(nexus, args, fragment):
    assert_one_line_error(nexus(*args), fragment)


def test_run_errors_leave_the_sandbox_and_store_intact(nexus, tmp_path):
    sandbox = create(nexus)
    (tmp_path / "latin1.py").write_bytes(b"print('caf\xe9')\n")
    cases = [
        (["-l", "cobol", "-c", "print(1)"], "unsupported language 'cobol'"),
        ([], "no code given"),
        (["-c", ""], "no code to run"),
        (["-c", "print(1)", "-f", str(tmp_path / "x.py")], "not both"),
        (["-f", str(tmp_path / "missing.py")], "cannot read"),
        (["-f", str(tmp_path)], "cannot read"),
        (["-f", str(tmp_path / "latin1.py")], "not valid UTF-8"),
        (["-c", "print(1)\0"], "NUL"),
        (["-c", "print(1)", "--timeout", "0"], "timeout"),
        (["-c", "print(1)", "--timeout", "soon"], "is not a valid float"),
    ]
    for args, fragment in cases:
        if "\0" in "".join(args):
            # argv cannot carry NUL: send it on stdin
            result = nexus("sandbox", "run", sandbox, "-c", "-", input=b"print(1)\0\n")
        else:
            result = nexus("sandbox", "run", sandbox, *args)
        assert_one_line_error(result, fragment)
    assert_store_intact(nexus, sandbox)


def test_run_on_a_paused_or_stopped_sandbox_is_refused(nexus):
    sandbox = create(nexus)
    nexus("sandbox", "pause", sandbox)
    assert_one_line_error(nexus("sandbox", "run", sandbox, "-c", "print(1)"), "is paused")
    assert_one_line_error(nexus("sandbox", "pause", sandbox), "already paused")
    nexus("sandbox", "resume", sandbox)
    assert_one_line_error(nexus("sandbox", "resume", sandbox), "is not paused")
    nexus("sandbox", "stop", sandbox)
    assert_one_line_error(nexus("sandbox", "run", sandbox, "-c", "print(1)"), "is stopped")
    assert_one_line_error(nexus("sandbox", "pause", sandbox), "is stopped")
    # stopping twice is not an error: stop is idempotent
    assert nexus("sandbox", "stop", sandbox, "--json").json()["status"] == "stopped"


def test_non_utf8_output_and_nul_bytes_in_output_are_carried_safely(nexus):
    sandbox = create(nexus)
    result = nexus(
        "sandbox",
        "run",
        sandbox,
        "-l",
        "bash",
        "-c",
        "printf 'ok \\377\\376 nul:\\000 end\\n'",
        "--json",
    )
    assert result.returncode == 0, result
    assert result.json()["stdout"] == "ok \ufffd\ufffd nul:\x00 end\n"


def test_file_errors(nexus, tmp_path):
    sandbox = create(nexus)
    missing = nexus("sandbox", "download", sandbox, "nope.txt", str(tmp_path / "n"))
    assert_one_line_error(missing, "cannot read nope.txt")
    assert not (tmp_path / "n").exists() and not (tmp_path / "n.partial").exists()
    assert_one_line_error(nexus("sandbox", "upload", sandbox, str(tmp_path / "missing.csv")), "cannot read")
    assert_one_line_error(nexus("sandbox", "files", sandbox, "no/such/dir"), "cannot list")
    assert_store_intact(nexus, sandbox)


def test_api_raises_typed_errors_with_the_same_messages(nx, sandbox):
    with pytest.raises(SandboxNotFound, match="Sandbox not found: sb_nope"):
        nx.sandbox_run("sb_nope", "python", "print(1)")
    with pytest.raises(InvalidArgument, match="unsupported language"):
        nx.sandbox_run(sandbox, "ruby", "puts 1")
    with pytest.raises(InvalidArgument, match="no code to run"):
        nx.sandbox_run(sandbox, "python", None)
    with pytest.raises(InvalidArgument, match="ttl_minutes"):
        nx.sandbox_create("x", ttl_minutes="ten")
    with pytest.raises(InvalidArgument, match="ttl_minutes"):
        nx.sandbox_create("x", ttl_minutes=0)
    with pytest.raises(InvalidArgument, match="sandbox name"):
        nx.sandbox_create("")
    nx.sandbox_pause(sandbox)
    with pytest.raises(SandboxStateError, match="is paused"):
        nx.sandbox_run(sandbox, "python", "print(1)")
    with pytest.raises(SandboxStateError, match="is paused"):
        nx.sandbox_write_file(sandbox, "x.txt", "data")
    nx.sandbox_resume(sandbox)
    assert nx.sandbox_run(sandbox, "python", "print(1)")["stdout"] == "1\n"


def test_a_newer_store_schema_is_refused_not_overwritten(data_dir, nexus):
    import sqlite3

    create(nexus)
    conn = sqlite3.connect(data_dir / "nexus.db")
    conn.execute("PRAGMA user_version = 99")
    conn.commit()
    conn.close()
    assert_one_line_error(nexus("sandbox", "list"), "newer nexus-jupyter")
    conn = sqlite3.connect(data_dir / "nexus.db")
    assert conn.execute("SELECT count(*) FROM sandboxes").fetchone()[0] == 1
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()


def test_listing_every_users_sandboxes_is_for_admins_only(nexus):
    assert_one_line_error(
        nexus("sandbox", "list", "--all-users", env={"NEXUS_USER": "mallory"}),
        "only admins can list every user's sandboxes (you are mallory)",
    )


def test_a_corrupt_store_is_reported_in_one_line(data_dir, nexus):
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "nexus.db").write_bytes(b"this is not a database" * 100)
    assert_one_line_error(nexus("sandbox", "list"), "state database")
    assert (data_dir / "nexus.db").read_bytes().startswith(b"this is not a database")
    (data_dir / "nexus.db").unlink()


@pytest.mark.parametrize(
    "kwargs, fragment",
    [
        ({"ttl_minutes": float("inf")}, "ttl_minutes must be a whole number"),
        ({"ttl_minutes": float("nan")}, "ttl_minutes must be a whole number"),
        ({"memory_mb": float("inf")}, "memory_mb must be a whole number"),
        ({"memory_mb": float("nan")}, "memory_mb must be a whole number"),
        ({"cpus": float("nan")}, "cpus must be more than 0"),
        ({"memory_mb": 1 << 20}, "memory_mb must be a whole number from 64 to"),  # 1 TiB: more than this machine
        ({"disk_mb": 4 << 20}, "disk_mb 4194304 is too large for memory_mb 1024"),  # 4 TiB; files live in memory
        ({"disk_mb": 1000}, "disk_mb may be at most memory_mb - 128 (896)"),
        ({"env": ["A=1"]}, "env must be a mapping"),
        ({"env": {"A=B": "1"}}, "env name 'A=B' is not usable"),
        ({"env": {"A\0B": "1"}}, "is not usable"),
        ({"env": {"": "1"}}, "is not usable"),
        ({"env": {"A": "x\0y"}}, "env value of A contains a NUL byte"),
        ({"env": {"A": None}}, "env value of A must be text"),
    ],
)
def test_api_create_refuses_bad_values_before_anything_is_made(nx, kwargs, fragment):
    with pytest.raises(InvalidArgument, match=re.escape(fragment)) as caught:
        nx.sandbox_create("bad", **kwargs)
    assert "\n" not in str(caught.value)
    assert nx.store.select(include_stopped=True) == []  # no row, not even a failed one
    assert nx.provider(nx.default_provider).box_ids() == set()


def test_names_made_in_a_box_cannot_drive_the_terminal(nexus):
    sandbox = create(nexus)
    evil = "\x1b]0;pwned\x07\x1b[2J\nfake-line"
    result = nexus("sandbox", "run", sandbox, "-c", f"open({evil!r}, 'w').write('x')")
    assert result.returncode == 0, result
    listing = nexus("sandbox", "files", sandbox)
    assert "\x1b" not in listing.stdout and "\x07" not in listing.stdout
    assert listing.stdout.splitlines() == ["           1  \\x1b]0;pwned\\x07\\x1b[2J\\nfake-line"]
    # --json keeps the name exact
    [entry] = nexus("sandbox", "files", sandbox, "--json").json()["files"]
    assert entry["name"] == evil
    # and a sandbox name given by a caller is shown escaped in tables and records
    named = nexus("sandbox", "create", "tab\x1b[31mred", "--json").json()["sandbox_id"]
    for args in (["list"], ["status", named]):
        shown = nexus("sandbox", *args).stdout
        assert "\x1b" not in shown and "tab\\x1b[31mred" in shown


@pytest.mark.parametrize(
    "variable, value, fragment",
    [
        ("NEXUS_MAX_FILE_MB", "lots", "NEXUS_MAX_FILE_MB must be a whole number"),
        ("NEXUS_MAX_FILE_MB", "0", "NEXUS_MAX_FILE_MB must be a whole number from 1"),
        ("NEXUS_FILE_TIMEOUT", "soon", "NEXUS_FILE_TIMEOUT must be a number of seconds above 0, got 'soon'"),
        ("NEXUS_FILE_TIMEOUT", "-3", "NEXUS_FILE_TIMEOUT must be a number of seconds above 0"),
    ],
)
def test_bad_file_settings_are_one_line_errors(nexus, tmp_path, variable, value, fragment):
    sandbox = create(nexus)
    assert nexus("sandbox", "run", sandbox, "-l", "bash", "-c", "echo x > f").returncode == 0
    result = nexus("sandbox", "download", sandbox, "f", str(tmp_path / "f"), env={variable: value})
    assert_one_line_error(result, fragment)
    assert not (tmp_path / "f").exists()
    assert_store_intact(nexus, sandbox)
