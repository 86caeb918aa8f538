"""The seed's CLI workflows, run with the real ``nexus`` command in subprocesses."""

from __future__ import annotations

import concurrent.futures
import json
import os

RECORD_FIELDS = [
    "sandbox_id",
    "name",
    "user_id",
    "agent_id",
    "tenant_id",
    "provider",
    "template_id",
    "status",
    "created_at",
    "last_active_at",
    "paused_at",
    "stopped_at",
    "ttl_minutes",
    "expires_at",
    "uptime_seconds",
]


def create(nexus, name="temp", *args) -> str:
    result = nexus("sandbox", "create", name, *args, "--json")
    assert result.returncode == 0, result
    return result.json()["sandbox_id"]


def test_create_returns_the_15_field_record(nexus, provider):
    result = nexus("sandbox", "create", "my-sandbox", "--ttl", "30", "--json")
    assert result.returncode == 0, result
    record = result.json()
    if os.environ.get("NEXUS_DATABASE_URL"):  # a database hosts share: the host holding it comes last
        assert list(record) == [*RECORD_FIELDS, "host"] and record["host"]
    else:
        assert list(record) == RECORD_FIELDS
    assert record["name"] == "my-sandbox"
    assert record["status"] == "active"
    assert record["provider"] == provider
    assert record["ttl_minutes"] == 30
    assert record["tenant_id"] == "default"
    assert record["agent_id"] is None and record["paused_at"] is None and record["stopped_at"] is None
    assert record["expires_at"] > record["last_active_at"]


def test_create_defaults_to_a_ten_minute_ttl_and_prints_a_summary(nexus):
    result = nexus("sandbox", "create", "my-sandbox")
    assert result.returncode == 0, result
    assert result.stdout.startswith("Created sandbox: sb_")
    assert "10 min idle" in result.stdout


def test_quick_one_off_execution(nexus):
    sandbox = create(nexus, "temp")
    run = nexus("sandbox", "run", sandbox, "-c", "print('Hello')")
    assert (run.returncode, run.stdout) == (0, "Hello\n")
    stop = nexus("sandbox", "stop", sandbox, "--json")
    assert stop.json()["status"] == "stopped"
    assert stop.json()["stopped_at"] is not None


def test_reuse_sandbox_for_multiple_tasks_refreshes_the_ttl(nexus):
    sandbox = create(nexus, "batch-processor", "--ttl", "30")
    before = nexus("sandbox", "status", sandbox, "--json").json()
    for task in (1, 2, 3):
        run = nexus("sandbox", "run", sandbox, "-c", f"print('Task {task}')")
        assert run.stdout == f"Task {task}\n"
    after = nexus("sandbox", "status", sandbox, "--json").json()
    assert after["expires_at"] >= before["expires_at"]
    assert after["last_active_at"] >= before["last_active_at"]


def test_data_analysis_pipeline_from_files(nexus, tmp_path):
    (tmp_path / "load_data.py").write_text("import json\njson.dump([3, 1, 2], open('data.json', 'w'))\n")
    (tmp_path / "transform_data.py").write_text(
        "import json\nrows = sorted(json.load(open('data.json')))\njson.dump(rows, open('sorted.json', 'w'))\n"
    )
    (tmp_path / "generate_report.py").write_text(
        "import json\nrows = json.load(open('sorted.json'))\nopen('report.txt', 'w').write(f'sorted: {rows}\\n')\n"
    )
    sandbox = create(nexus, "data-analysis", "--ttl", "60")
    for script in ("load_data.py", "transform_data.py", "generate_report.py"):
        assert nexus("sandbox", "run", sandbox, "-f", str(tmp_path / script)).returncode == 0
    report = nexus("sandbox", "run", sandbox, "-l", "bash", "-c", "cat report.txt")
    assert report.stdout == "sorted: [1, 2, 3]\n"


def test_multi_language_workflow_hands_data_json_from_python_to_javascript_to_bash(nexus):
    sandbox = create(nexus, "multi-lang")
    python = nexus(
        "sandbox",
        "run",
        sandbox,
        "-l",
        "python",
        "-c",
        "import json\ndata = {'count': 42}\nwith open('data.json', 'w') as f:\n    json.dump(data, f)\n",
    )
    assert python.returncode == 0, python
    javascript = nexus(
        "sandbox",
        "run",
        sandbox,
        "-l",
        "javascript",
        "-c",
        "const fs = require('fs');\nconst data = JSON.parse(fs.readFileSync('data.json'));\n"
        "console.log('Count:', data.count);\n",
    )
    assert javascript.stdout == "Count: 42\n", javascript
    bash = nexus("sandbox", "run", sandbox, "-l", "bash", "-c", "cat data.json\nls -lh\ndf -h")
    assert bash.returncode == 0, bash
    assert bash.stdout.startswith('{"count": 42}')
    assert "data.json" in bash.stdout


def test_code_from_stdin_in_every_language(nexus):
    sandbox = create(nexus)
    assert nexus("sandbox", "run", sandbox, "-c", "-", input="print('test')").stdout == "test\n"
    assert (
        nexus("sandbox", "run", sandbox, "-l", "javascript", "-c", "-", input="console.log('test')").stdout == "test\n"
    )
    assert nexus("sandbox", "run", sandbox, "-l", "bash", "-c", "-", input="echo test").stdout == "test\n"


def test_javascript_supports_top_level_await(nexus):
    sandbox = create(nexus)
    run = nexus(
        "sandbox",
        "run",
        sandbox,
        "-l",
        "javascript",
        "-c",
        "const v = await new Promise((r) => setTimeout(() => r(7), 10));\nconsole.log(v * 6);",
    )
    assert run.stdout == "42\n", run


def test_run_json_has_stdout_stderr_exit_code_and_execution_time(nexus):
    sandbox = create(nexus)
    result = nexus("sandbox", "run", sandbox, "-c", "print(42)", "--json")
    data = result.json()
    assert list(data) == ["stdout", "stderr", "exit_code", "execution_time", "results", "error"]
    assert (data["stdout"], data["stderr"], data["exit_code"]) == ("42\n", "", 0)
    assert 0 < data["execution_time"] < 30


def test_execution_errors_are_reported_in_the_json_result(nexus):
    sandbox = create(nexus)
    result = nexus("sandbox", "run", sandbox, "-c", "print(1/0)", "--json")
    data = result.json()
    assert data["exit_code"] != 0
    assert "ZeroDivisionError: division by zero" in data["stderr"]


def test_human_run_exits_with_the_code_exit_status_and_streams_both_streams(nexus):
    sandbox = create(nexus)
    run = nexus("sandbox", "run", sandbox, "-l", "bash", "-c", "echo out; echo err >&2; exit 3")
    assert (run.returncode, run.stdout, run.stderr) == (3, "out\n", "err\n")


def test_timeout_prints_the_seed_message_and_the_sandbox_stays_usable(nexus):
    sandbox = create(nexus)
    run = nexus("sandbox", "run", sandbox, "-c", "import time\ntime.sleep(100)\n", "--timeout", "2")
    assert run.returncode == 124
    assert run.stderr.strip() == "Error: Code execution exceeded 2 second timeout"
    assert nexus("sandbox", "run", sandbox, "-c", "print('alive')").stdout == "alive\n"


def test_list_status_pause_resume_stop(nexus):
    sandbox = create(nexus, "demo-sandbox-1")
    listed = nexus("sandbox", "list", "--json").json()
    assert [s["sandbox_id"] for s in listed["sandboxes"]] == [sandbox]
    table = nexus("sandbox", "list")
    assert "SANDBOX ID" in table.stdout and sandbox in table.stdout and "demo-sandbox-1" in table.stdout

    paused = nexus("sandbox", "pause", sandbox, "--json").json()
    assert paused["status"] == "paused" and paused["paused_at"] and paused["expires_at"] is None
    assert nexus("sandbox", "status", sandbox, "--json").json()["status"] == "paused"

    resumed = nexus("sandbox", "resume", sandbox, "--json").json()
    assert resumed["status"] == "active" and resumed["paused_at"] is None and resumed["expires_at"]

    stopped = nexus("sandbox", "stop", sandbox, "--json").json()
    assert stopped["status"] == "stopped"
    assert nexus("sandbox", "list", "--json").json() == {"sandboxes": []}
    assert [s["status"] for s in nexus("sandbox", "list", "--all", "--json").json()["sandboxes"]] == ["stopped"]


def test_list_verify_adds_verified_and_provider_status(nexus):
    sandbox = create(nexus)
    nexus("sandbox", "pause", sandbox)
    [entry] = nexus("sandbox", "list", "--verify", "--json").json()["sandboxes"]
    assert entry["verified"] is True
    assert entry["provider_status"] == "paused"
    assert "VERIFIED" in nexus("sandbox", "list", "-v").stdout


def test_list_filters_by_agent_and_tenant(nexus):
    first = create(nexus, "one", "--agent-id", "agent_123", "--tenant-id", "tenant_456")
    create(nexus, "two", "--agent-id", "agent_999")
    by_agent = nexus("sandbox", "list", "--agent-id", "agent_123", "--json").json()["sandboxes"]
    assert [s["sandbox_id"] for s in by_agent] == [first]
    combined = nexus("sandbox", "list", "-a", "agent_123", "-t", "tenant_456", "--json").json()["sandboxes"]
    assert [s["sandbox_id"] for s in combined] == [first]
    assert nexus("sandbox", "list", "-t", "nobody", "--json").json() == {"sandboxes": []}


def test_a_sandbox_can_be_named_instead_of_its_id(nexus):
    create(nexus, "named-box")
    assert nexus("sandbox", "run", "named-box", "-c", "print(7)").stdout == "7\n"
    assert nexus("sandbox", "stop", "named-box", "--json").json()["status"] == "stopped"


def test_files_upload_list_download(nexus, tmp_path):
    sandbox = create(nexus)
    (tmp_path / "sales.csv").write_text("region,amount\nnorth,3\nsouth,4\n")
    up = nexus("sandbox", "upload", sandbox, str(tmp_path / "sales.csv"), "--json").json()
    assert up["size"] == len("region,amount\nnorth,3\nsouth,4\n")
    nexus("sandbox", "run", sandbox, "-c", "open('report.txt','w').write(str(len(open('sales.csv').readlines())))")
    names = [f["name"] for f in nexus("sandbox", "files", sandbox, "--json").json()["files"]]
    assert names == ["report.txt", "sales.csv"]
    down = nexus("sandbox", "download", sandbox, "report.txt", str(tmp_path / "report.txt"))
    assert down.returncode == 0, down
    assert (tmp_path / "report.txt").read_text() == "3"
    assert nexus("sandbox", "download", sandbox, "report.txt", "-").stdout == "3"


def test_eight_concurrent_creates_all_succeed(nexus):
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda i: nexus("sandbox", "create", f"box-{i}", "--json"), range(8)))
    assert all(r.returncode == 0 for r in results), results
    ids = {r.json()["sandbox_id"] for r in results}
    assert len(ids) == 8
    listed = {s["sandbox_id"] for s in nexus("sandbox", "list", "--json").json()["sandboxes"]}
    assert listed == ids


def test_eight_concurrent_runs_on_one_sandbox_all_succeed(nexus):
    sandbox = create(nexus)
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(
                lambda i: nexus("sandbox", "run", sandbox, "-c", f"import time; time.sleep(0.3); print({i})"), range(8)
            )
        )
    assert [r.stdout for r in results] == [f"{i}\n" for i in range(8)], results


def test_reap_command_reports_a_pass(nexus):
    result = nexus("sandbox", "reap", "--json")
    if os.environ.get("NEXUS_URL"):  # remote mode: the server reaps on its own clock
        assert (result.returncode, result.stderr) == (
            1,
            f"Error: the nexus server at {os.environ['NEXUS_URL']} reaps its sandboxes itself\n",
        )
        return
    assert result.returncode == 0, result
    report = result.json()
    assert set(report) == {"expired", "vanished", "failed_creates", "orphans", "pruned", "fleet"}
    assert report["fleet"] is True  # a pass asked for by hand does the fleet's share too
    table = nexus("sandbox", "reap")
    assert table.stdout == "0 expired, 0 vanished, 0 failed creates, 0 orphans, 0 pruned\n", table


def test_version_and_help(nexus):
    assert nexus("--version").stdout.startswith("nexus, version")
    help_text = nexus("sandbox", "--help").stdout
    for verb in ("create", "run", "list", "status", "pause", "resume", "stop"):
        assert verb in help_text
    create_help = " ".join(nexus("sandbox", "create", "--help").stdout.split())
    assert "--provider TEXT docker, e2b, local [default: local, or $NEXUS_SANDBOX_PROVIDER]" in create_help


def test_json_output_is_plain_json_for_jq(nexus):
    sandbox = create(nexus)
    raw = nexus("sandbox", "status", sandbox, "--json").stdout
    assert json.loads(raw)["sandbox_id"] == sandbox


def test_one_megabyte_of_code_from_a_file_and_from_stdin(nexus, tmp_path):
    sandbox = create(nexus)
    code = "data = '" + "x" * (1 << 20) + "'\nprint(len(data))\n"
    (tmp_path / "big.py").write_text(code)
    assert nexus("sandbox", "run", sandbox, "-f", str(tmp_path / "big.py")).stdout == f"{1 << 20}\n"
    assert nexus("sandbox", "run", sandbox, "-c", "-", input=code).stdout == f"{1 << 20}\n"


def test_a_script_file_exits_with_its_own_status(nexus, tmp_path):
    sandbox = create(nexus)
    script = tmp_path / "check.py"
    script.write_text("import sys\nprint('checking', __file__)\nif __name__ == '__main__':\n    sys.exit(3)\n")
    run = nexus("sandbox", "run", sandbox, "-f", str(script))
    assert (run.returncode, run.stdout, run.stderr) == (3, "checking /home/user/check.py\n", "")


def test_metrics_as_a_table_and_as_json(nexus):
    sandbox = nexus("sandbox", "create", "measured", "--json").json()["sandbox_id"]
    table = nexus("sandbox", "metrics", sandbox)
    assert table.returncode == 0, table
    lines = table.stdout.splitlines()
    assert lines[0] == f"Sandbox {sandbox}"
    assert [line.split(":")[0].strip() for line in lines[1:]] == [
        "CPU time",
        "Memory",
        "Memory peak",
        "Processes",
        "Disk",
    ]
    assert "of 1024.0 MiB" in lines[2]
    usage = nexus("sandbox", "metrics", sandbox, "--json").json()
    assert list(usage) == [
        "sandbox_id",
        "cpu_seconds",
        "memory_bytes",
        "memory_peak_bytes",
        "memory_limit_bytes",
        "processes",
        "disk_used_bytes",
        "disk_limit_bytes",
        "measured_at",
    ]
    nexus("sandbox", "stop", sandbox)
    stopped = nexus("sandbox", "metrics", sandbox)
    assert (stopped.returncode, stopped.stderr) == (1, f"Error: Sandbox {sandbox} is stopped\n")
