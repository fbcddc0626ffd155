"""README.md, examples/ and BENCHMARKS.md followed to the letter, against the mock: every
Python snippet outside the Nuke section runs, every configuration example parses (bash,
cmd.exe and PowerShell forms), the command examples run, quoted messages are the real ones,
and BENCHMARKS.md's commands exist with their options. A change to either side that breaks
the other fails here."""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from typing import Dict, List, Tuple

import pytest
from helpers import fail_workflow, sleep_workflow, wait_until, windows_argv

from comfy_cluster import JobFailed, NoServerAvailable, ServerPool
from comfy_cluster.config import servers_from_env, strategy_from_env
from comfy_cluster.errors import ConfigError
from comfy_cluster.testing import MockComfyServer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")


def blocks(path: str = README) -> List[Tuple[str, str, str]]:
    """``(language, code, "## section")`` for every fenced block."""
    out = []
    section = ""
    lang = None
    lines: List[str] = []
    for line in open(path, encoding="utf-8").read().splitlines():
        if lang is None:
            if line.startswith("## "):
                section = line
            m = re.match(r"^\s*```(\w*)\s*$", line)
            if m:
                lang, lines = m.group(1), []
        elif line.strip() == "```":
            out.append((lang, "\n".join(lines), section))
            lang = None
        else:
            lines.append(line)
    assert lang is None, "unclosed code block"
    return out


def section_blocks(section: str, *langs: str) -> List[str]:
    return [code for lang, code, sec in blocks() if sec == section and lang in langs]


@pytest.fixture
def workdir(tmp_path):
    """A folder holding a copy of examples/, as a fresh clone's folder would."""
    shutil.copytree(os.path.join(ROOT, "examples"), tmp_path / "examples")
    return tmp_path


def _env(mock, **extra):
    env = dict(os.environ, NUKE_COMFYUI_SERVERS=json.dumps([{"name": "mock", "url": mock.url}]), **extra)
    env.pop("NUKE_COMFYUI_STRATEGY", None)
    return env


# ---------------------------------------------------------------------------------------------
# Python snippets


def test_python_snippets_run_in_order_against_the_mock(mock_comfy, workdir):
    snippets = [(code, sec) for lang, code, sec in blocks() if lang == "python" and not sec.startswith("## Nuke")]
    assert len(snippets) >= 3
    first, *rest = [code for code, _ in snippets]
    # The first snippet stands alone; the later ones continue with a pool "as above".
    script = first + "\n\nimport comfy_cluster\npool = comfy_cluster.ServerPool.from_env()\n"
    script += "\n".join(rest) + "\npool.close()\nprint('README-SNIPPETS-OK')\n"
    out = subprocess.run([sys.executable, "-c", script], cwd=workdir, env=_env(mock_comfy), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "README-SNIPPETS-OK" in out.stdout
    assert out.stderr == ""  # the library prints nothing of its own
    first_line = next(line for line in out.stdout.splitlines() if "renders" in line)
    assert first_line.startswith("mock ") and "inverted_00001_.png" in first_line
    assert (workdir / "renders" / "inverted_00001_.png").is_file()


# ---------------------------------------------------------------------------------------------
# Configuration examples in every shell


def _bash_env(code: str) -> Dict[str, str]:
    lexer = shlex.shlex(code, posix=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    env = {}
    for token in lexer:
        if "=" in token and re.match(r"^[A-Z_0-9]+=", token):
            name, _, value = token.partition("=")
            env[name] = value
    return env


def _cmd_env(code: str) -> Dict[str, str]:
    env = {}
    for line in code.splitlines():
        m = re.match(r"^set ([A-Z_0-9]+)=(.*)$", line)  # cmd.exe keeps everything after '='
        if m:
            env[m.group(1)] = m.group(2)
    return env


def _powershell_env(code: str) -> Dict[str, str]:
    env = {}
    for m in re.finditer(r"^\$env:([A-Z_0-9]+) = '((?:[^']|'')*)'$", code, flags=re.M):
        env[m.group(1)] = m.group(2).replace("''", "'")
    return env


def _setx_env(code: str) -> Dict[str, str]:
    """``setx NAME VALUE`` lines as setx.exe receives them from cmd.exe (its own C runtime
    splitting: ``\\"`` is a quote), checked against setx's 1024-character limit."""
    env = {}
    for line in code.splitlines():
        if line.startswith("setx "):
            argv = windows_argv(line)
            assert len(argv) == 3 and "=" not in argv[1], line  # setx takes no "="
            assert len(argv[2]) <= 1024, "setx truncates values at 1024 characters"
            env[argv[1]] = argv[2]
    return env


def _powershell_user_env(code: str) -> Dict[str, str]:
    found = re.findall(r"^\[Environment\]::SetEnvironmentVariable\('([A-Z_0-9]+)', '((?:[^']|'')*)', 'User'\)$", code, flags=re.M)
    return {name: value.replace("''", "'") for name, value in found}


def test_persistent_forms_set_the_same_values_as_the_session_forms():
    """setx (cmd.exe) and [Environment]::SetEnvironmentVariable (PowerShell), the ways to keep
    a value for new windows, give what set and $env: give."""
    checked = 0
    for lang, code, sec in blocks():
        if sec != "## Configuration" or lang not in ("bat", "powershell"):
            continue
        now, kept = (_cmd_env(code), _setx_env(code)) if lang == "bat" else (_powershell_env(code), _powershell_user_env(code))
        assert kept and kept == now, (lang, kept, now)
        servers_from_env(kept)
        checked += 1
    assert checked == 2


def test_configuration_examples_parse_in_bash_cmd_and_powershell():
    parsers = {"bash": _bash_env, "bat": _cmd_env, "powershell": _powershell_env}
    seen = set()
    for lang, code, sec in blocks():
        if sec != "## Configuration":
            continue
        env = parsers[lang](code)
        assert env, f"no variable set in the {lang} block"
        servers, _ = servers_from_env(env)
        assert servers
        if "NUKE_COMFYUI_STRATEGY" in env:
            assert strategy_from_env(env) == "least_loaded"
        seen.add(lang)
    assert seen == {"bash", "bat", "powershell"}


def test_every_servers_value_shown_anywhere_parses():
    """Beyond the Configuration section: every NUKE_COMFYUI_SERVERS a bash block of README sets
    (gateway and Nuke sections included) and every one in a command's --help examples is a
    valid server list (a list of host:port strings is not, and once slipped into both)."""
    from comfy_cluster.cli import build_parser

    values = []
    for lang, code, _ in blocks():
        if lang == "bash":
            env = _bash_env(code)
            if "NUKE_COMFYUI_SERVERS" in env:
                values.append(env["NUKE_COMFYUI_SERVERS"])
    parser = build_parser()
    subparsers = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    for action in subparsers:
        for sub in action.choices.values():
            text = sub.format_help()
            for line in text.splitlines():
                if "NUKE_COMFYUI_SERVERS=" in line:
                    values.append(_bash_env(line)["NUKE_COMFYUI_SERVERS"])
    assert len(values) >= 4, values
    for value in values:
        servers, _ = servers_from_env({"NUKE_COMFYUI_SERVERS": value})
        assert servers, value


def test_documented_config_error_is_the_real_one():
    text = open(README, encoding="utf-8").read()
    quoted = re.search(r"`(NUKE_COMFYUI_SERVERS\[2\] \(gpu3\): [^`]+)`", text).group(1)
    env = {"NUKE_COMFYUI_SERVERS": json.dumps([{"name": "gpu1", "host": "a"}, {"name": "gpu2", "host": "b"},
                                               {"name": "gpu3", "host": "c", "port": 99999}])}
    with pytest.raises(ConfigError) as info:
        servers_from_env(env)
    assert str(info.value) == quoted


def test_documented_no_server_message_is_the_real_one():
    text = open(README, encoding="utf-8").read()
    quoted = re.search(r"`(no server can take the job \([^`]+)`", text).group(1)
    gpu2 = MockComfyServer(name="gpu2").start()
    gpu3 = MockComfyServer(name="gpu3", node_types=["EmptyImage", "SaveImage", "LoadImage"]).start()
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there: refused
    try:
        servers = [{"name": "gpu1", "host": "127.0.0.1", "port": port}, {"name": "gpu2", "url": gpu2.url, "max_queue": 1},
                   {"name": "gpu3", "url": gpu3.url}]
        with ServerPool(servers, background_status=False) as pool:
            job = pool.submit(sleep_workflow(30.0, steps=30))
            wait_until(lambda: job.prompt_id is not None, what="the job on gpu2")
            with pytest.raises(NoServerAvailable) as info:
                pool.select(sleep_workflow())
            job.cancel()
        assert str(info.value) == quoted
    finally:
        gpu2.stop()
        gpu3.stop()


# ---------------------------------------------------------------------------------------------
# Command examples


def test_command_examples_run_against_the_mock(mock_comfy, workdir):
    (code,) = [c for c in section_blocks("## Command line", "bash")]
    lines = [line for line in code.splitlines() if line.strip() and not line.startswith("#")]
    assert len(lines) >= 3
    for line in lines:
        argv = shlex.split(line)
        assert argv[0] == "comfy-cluster"
        out = subprocess.run([sys.executable, "-m", "comfy_cluster", *argv[1:]], cwd=workdir, env=_env(mock_comfy),
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (line, out.stderr)
        if "--json" in argv:
            rows = [json.loads(r) for r in out.stdout.splitlines()]
            assert [r["frame"] for r in rows] == [1, 2] and all(r["status"] == "success" for r in rows)
            assert [os.path.basename(r["paths"][0]) for r in rows] == ["inverted.0001.png", "inverted.0002.png"]
    assert (workdir / "renders" / "inverted.0001.png").is_file()


def test_example_script_commands_run_as_its_docstring_says(mock_comfy, workdir):
    import ast

    script = os.path.join(ROOT, "examples", "submit_workflow.py")
    doc = ast.get_docstring(ast.parse(open(script, encoding="utf-8").read())) or ""
    # The runnable ones (the first is a synopsis for a real cluster): workflows from examples/.
    commands = [line.strip() for line in doc.splitlines() if line.strip().startswith("python examples/submit_workflow.py examples/")]
    assert len(commands) >= 2
    for command in commands:
        argv = shlex.split(command)
        out = subprocess.run([sys.executable, *argv[1:]], cwd=workdir, env=_env(mock_comfy), capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, (command, out.stderr)
        assert "done on mock" in out.stdout


def test_try_it_installs_what_exists():
    """The install lines name extras and a command that pyproject.toml really has."""
    pyproject = open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8").read()
    for lang, code, sec in blocks():
        for extra in re.findall(r'pip install -e "\.\[(\w+)\]"', code):
            assert re.search(rf"^{extra} = \[", pyproject, flags=re.M), extra
    assert 'comfy-cluster = "comfy_cluster.cli:main"' in pyproject
    assert "pip install comfy-cluster[" not in open(README, encoding="utf-8").read()  # not on an index


def test_examples_named_in_readme_exist():
    text = open(README, encoding="utf-8").read()
    names = set(re.findall(r"examples/[\w.#{}:/]+", text))
    assert "examples/invert_workflow_api.json" in names
    for name in names:
        name = name.replace("####", "0001").replace("{f:04d}", "0001").rstrip(".")
        assert os.path.isfile(os.path.join(ROOT, name)), name


# ---------------------------------------------------------------------------------------------
# Promises in prose


def test_deleting_a_job_in_comfyuis_own_queue_sends_it_again(mock_comfy):
    import requests

    with ServerPool([{"name": "m", "url": mock_comfy.url, "max_queue": 2}], reconcile_interval=0.5) as pool:
        mock_comfy.pause_jobs()  # the running job holds the GPU, whatever the machine's load
        jobs = [pool.submit(sleep_workflow(0.2, steps=2)) for _ in range(2)]

        def pending():  # either job: two jobs to one server may start in either order
            # Once one runs (held there by the pause), the other stays pending; a job seen
            # pending before the first started may be the one about to run (the delete misses it).
            running, queued = mock_comfy.queue_snapshot()
            if not running:
                return None
            return next((j for j in jobs if j.prompt_id is not None and j.prompt_id in queued), None)

        victim = wait_until(pending, timeout=30, what="a job pending on the server")
        deleted = victim.prompt_id
        requests.post(mock_comfy.url + "/queue", json={"delete": [deleted]}, timeout=5)
        wait_until(lambda: victim.attempts == 2, timeout=30, what="the deleted job sent again")
        mock_comfy.resume_jobs()
        results = [j.result(timeout=30) for j in jobs]
    result = results[jobs.index(victim)]
    assert result.prompt_id != deleted and result.attempts == 2


def test_error_messages_are_one_line(mock_comfy):
    with ServerPool([{"name": "m", "url": mock_comfy.url}]) as pool:
        job = pool.submit(fail_workflow("first line\nsecond line\n  third"))
        with pytest.raises(JobFailed) as info:
            job.result(timeout=20)
    assert "\n" not in str(info.value) and "first line second line third" in str(info.value)
    assert "\n" in info.value.exception_message


# ---------------------------------------------------------------------------------------------
# BENCHMARKS.md


def test_benchmark_commands_exist_with_their_options():
    text = open(os.path.join(ROOT, "BENCHMARKS.md"), encoding="utf-8").read()
    commands = re.findall(r"`python -m (bench\.bench_\w+)([^`]*)`", text)
    assert len(commands) >= 5
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    # All started at once, then read one by one: the interpreters' start-ups overlap.
    procs = [subprocess.Popen([sys.executable, "-m", module, "--help"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for module, _ in commands]
    for (module, args), proc in zip(commands, procs):
        stdout, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 0, (module, stderr)
        for option in re.findall(r"--[\w-]+", args):
            assert option in stdout, (module, option)


def test_every_documented_error_class_exists_and_is_a_library_error():
    import comfy_cluster

    text = open(README, encoding="utf-8").read()
    listed = re.search(r"\* Errors: `ComfyClusterError` > (.+?)\.\n\*", text, flags=re.S).group(1)
    names = [n for n in re.findall(r"`(\w+)`", listed) if n != "OSError"]
    assert "LocalFileError" in names and len(names) >= 8
    for name in names:
        assert issubclass(getattr(comfy_cluster, name), comfy_cluster.ComfyClusterError), name


# ---------------------------------------------------------------------------------------------
# Issue 21 item 4: what README shows in comments and side remarks is true as written


def test_commented_alternatives_in_the_batches_snippet_run(workdir):
    """A commented-out line of the Batches snippet (``# wfs = frame_workflows(...)``) runs as
    written with the snippet's own template and frames (``frame_input="3.seed"`` raised)."""
    (code,) = section_blocks("## Batches", "python")
    alternatives = [line[2:] for line in code.splitlines() if re.match(r"^# \w+ = \w+\(", line)]
    assert alternatives
    head = "\n".join(line for line in code.splitlines() if line.startswith(("from ", "template =", "frames =")))
    script = head + "\n" + "\n".join(alternatives) + "\nprint([w['2']['inputs']['seed'] for w in wfs])\n"
    out = subprocess.run([sys.executable, "-c", script], cwd=workdir, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[1, 2]"


def test_download_comment_shows_what_download_returns(mock_comfy, workdir):
    """The first snippet's comments: an absolute path, and a second run adds the job's id."""
    text = open(README, encoding="utf-8").read()
    shown = re.search(r"job\.download\(\"renders\"\)\)\s+# (\w+) \['([^']+)'\]", text)
    second = re.search(r"the job's id is added \((\w+\.png)\)", text).group(1)
    first_snippet = [code for lang, code, _ in blocks() if lang == "python"][0]
    script = first_snippet + "\n" + first_snippet  # the same snippet run twice
    out = subprocess.run([sys.executable, "-c", script], cwd=workdir, env=_env(mock_comfy), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    printed = [line for line in out.stdout.splitlines() if "renders" in line]
    server, paths = printed[0].split(" ", 1)
    (path,) = eval(paths)  # noqa: S307 - our own process's printed list
    assert server == shown.group(1) and os.path.isabs(path) and os.path.isabs(shown.group(2))
    assert os.path.basename(path) == os.path.basename(shown.group(2))
    (again,) = eval(printed[1].split(" ", 1)[1])  # noqa: S307
    assert re.sub(r"[0-9a-f]{8}", "ID", os.path.basename(again)) == re.sub(r"[0-9a-f]{8}", "ID", second)


def test_plugin_test_command_needs_no_shell_glob():
    """README's command for the plugin's tests works in cmd.exe and PowerShell (which expand no
    ``*``) and selects exactly the tests/test_nuke_*.py tests."""
    text = open(README, encoding="utf-8").read()
    command = re.search(r"`(python -m pytest tests[^`]*nuke[^`]*)`", text).group(1)
    argv = shlex.split(command)
    assert not any(c in arg for arg in argv for c in "*?[")
    import glob

    files = sorted(glob.glob(os.path.join(ROOT, "tests", "test_nuke_*.py")))
    assert files
    env = dict(os.environ, PYTHONPATH=ROOT)

    def collected(args: List[str]) -> List[str]:
        out = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        return sorted(line for line in out.stdout.splitlines() if "::" in line)

    assert collected(argv[3:]) == collected([os.path.relpath(f, ROOT) for f in files])


def test_renders_folder_is_ignored_by_git():
    out = subprocess.run(["git", "check-ignore", "-q", "renders/inverted_00001_.png"], cwd=ROOT, timeout=30)
    assert out.returncode == 0, "renders/ (README's download folder) must be in .gitignore"


def test_submit_count_runs_new_images_not_cached_copies(mock_comfy, workdir):
    """``--count 3`` gives three computed images: ComfyUI answers an identical prompt from its
    cache, so each copy gets its own seed (before: three copies of one cached image)."""
    out = subprocess.run([sys.executable, "-m", "comfy_cluster", "submit", "examples/sleep_workflow_api.json", "--count", "3",
                          "--json"], cwd=workdir, env=_env(mock_comfy), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    rows = [json.loads(r) for r in out.stdout.splitlines()]
    names = {r["outputs"][0]["filename"] for r in rows}
    assert len(rows) == 3 and len(names) == 3, rows  # a cached copy repeats the first file's name
    assert "warning" not in out.stderr


def test_submit_count_without_a_seed_warns(mock_comfy, workdir):
    out = subprocess.run([sys.executable, "-m", "comfy_cluster", "submit", "examples/invert_workflow_api.json", "--count", "2",
                          "--input", "10=examples/plate.0001.png"], cwd=workdir, env=_env(mock_comfy),
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "no seed input" in out.stderr and "cache" in out.stderr


@pytest.mark.parametrize("command_line, expected", [
    ("comfy-cluster gateway --argv /mnt/comfyui/main.py", ["/mnt/comfyui/main.py"]),
    ("comfy-cluster gateway --argv main.py", ["main.py"]),
    (r'comfy-cluster gateway --argv "C:\ComfyUI\main.py"', ["C:\\ComfyUI\\main.py"]),  # cmd.exe
    (r"comfy-cluster gateway --argv 'C:\ComfyUI\main.py'", ["C:\\ComfyUI\\main.py"]),  # cmd.exe keeps ''
    ("""comfy-cluster gateway --argv '["/mnt/comfyui/main.py"]'""", None),  # bash's form, split by cmd.exe
])
def test_gateway_argv_forms_of_every_shell(command_line, expected):
    """``--argv`` as cmd.exe passes it: a path alone works in every shell; the JSON list, whose
    inner quotes cmd.exe and PowerShell 5.1 drop, gets an error naming the form that works."""
    from comfy_cluster.gateway.cli import _argv, build_parser

    args = build_parser().parse_args(windows_argv(command_line)[2:])
    if expected is None:
        with pytest.raises(ValueError, match=r"--argv /mnt/comfyui/main.py"):
            _argv(args.argv)
    else:
        assert _argv(args.argv) == expected
    readme = open(README, encoding="utf-8").read()
    for shown in re.findall(r"--argv (\S+)`", readme):  # every --argv README shows
        assert _argv(shown)


def test_windows_blocks_use_their_own_shells_syntax():
    """cmd.exe and PowerShell blocks hold no bash-only syntax: PowerShell 5.1 has no ``&&``,
    neither has ``export`` or ``$VAR``, and cmd.exe passes single quotes on as text."""
    seen = set()
    for lang, code, sec in blocks():
        lines = [line for line in code.splitlines() if line.strip() and not line.lstrip().startswith(("#", "::"))]
        if lang == "powershell":
            assert not any("&&" in line or line.startswith("export ") for line in lines), (sec, code)
        if lang == "bat":
            assert not any(line.startswith("export ") or re.search(r"\s'\S", line) or "$" in line for line in lines), (sec, code)
        seen.add(lang)
    assert {"bat", "powershell"} <= seen
    # README's bash command lines that a Windows user runs too have a PowerShell form.
    text = open(README, encoding="utf-8").read()
    assert 'pip install -e ".[test]"; python -m pytest' in text


def test_example_docstring_sets_the_servers_in_every_shell():
    import ast

    doc = ast.get_docstring(ast.parse(open(os.path.join(ROOT, "examples", "submit_workflow.py"), encoding="utf-8").read())) or ""
    forms = {
        "bash": _bash_env(next(line for line in doc.splitlines() if "export NUKE_COMFYUI_SERVERS" in line)),
        "cmd": _cmd_env(re.search(r"``(set NUKE_COMFYUI_SERVERS=[^`]+)``", doc).group(1)),
        "powershell": _powershell_env(re.search(r"``(\$env:NUKE_COMFYUI_SERVERS = '[^`]+')``", doc).group(1)),
    }
    values = {shell: env["NUKE_COMFYUI_SERVERS"] for shell, env in forms.items()}
    assert len(set(values.values())) == 1, values
    servers_from_env({"NUKE_COMFYUI_SERVERS": values["cmd"]})


def test_command_line_examples_read_the_same_in_every_shell():
    """The Command line examples carry no quotes, ``$`` or globs, so cmd.exe and PowerShell
    pass them exactly as bash does (and need no forms of their own)."""
    (code,) = section_blocks("## Command line", "bash")
    for line in code.splitlines():
        if line.strip() and not line.startswith("#"):
            assert shlex.split(line) == windows_argv(line), line
            assert not re.search(r"[$'\"*?`]", line), line
