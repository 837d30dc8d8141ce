"""Every shell command of the README works as written for a reader standing in the
clone root: the ones that are safe to run here run verbatim (their sample output, the
`# ...` lines right under a command, must be exactly what they print), the node
command is parsed and its configuration loaded as `meshcore node` does before it
binds anything, and the rest are named below with the reason they are not run. A new
command must be put in one of these classes."""
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

import meshcore

ROOT = Path(__file__).resolve().parent.parent
BLOCKS = re.findall(r"```sh\n(.*?)```", (ROOT / "README.md").read_text(), re.S)

RUN_FROM_ROOT = ("meshcore policy ",)                  # read the clone's files
RUN_IN_TEMP_DIR = ("meshcore ca ",)                   # write ./ca (ignored by git in the clone): a temp folder here
LOAD_ONLY = ("meshcore node ", "meshcore waypoint ")  # bind ports: tests/node and tests/waypoint run them
NOT_RUN = {
    "pip install": "installs into the environment",
    "apt-get install": "installs system packages",
    "pytest": "the whole suite",
    "meshcore demo": "tests/test_demo.py runs it",
    "python tests/fuzz/run.py": "minutes to hours; tests/fuzz/test_fuzz.py runs the runner",
}


def commands() -> list[tuple[str, list[str]]]:
    """(command, sample output lines) for every command of every ```sh block; `a && b`
    is two commands, a trailing backslash continues the line."""
    out = []
    for block in BLOCKS:
        lines = block.replace("\\\n", " ").splitlines()
        for line in lines:
            if line.startswith("#"):
                if out:
                    out[-1][1].append(line[2:])
                continue
            command = line.split("  #", 1)[0].strip()
            for part in command.split(" && "):
                out.append((" ".join(part.split()), []))
    return out


COMMANDS = commands()


def test_every_command_is_classified():
    assert len(BLOCKS) >= 5 and len(COMMANDS) >= 10
    for command, _ in COMMANDS:
        assert command.startswith(RUN_FROM_ROOT + RUN_IN_TEMP_DIR + LOAD_ONLY + tuple(NOT_RUN)), command


def _meshcore(command: str, cwd) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(Path(meshcore.__file__).parent.parent))
    argv = shlex.split(command)
    assert argv[0] == "meshcore"
    return subprocess.run([sys.executable, "-m", "meshcore", *argv[1:]], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=60)


def test_policy_commands_run_from_the_clone_root_and_print_the_sample():
    ran = 0
    for command, sample in COMMANDS:
        if not command.startswith(RUN_FROM_ROOT):
            continue
        got = _meshcore(command, ROOT)
        assert got.returncode in (0, 1) and got.stderr == "", (command, got.stderr)
        if sample:
            assert got.stdout.splitlines() == sample, command
        ran += 1
    assert ran >= 2


def test_ca_commands_run_in_order(tmp_path):
    ca = [c for c, _ in COMMANDS if c.startswith(RUN_IN_TEMP_DIR)]
    assert [c.split()[2] for c in ca] == ["init", "issue", "show"]
    for command in ca:
        got = _meshcore(command, tmp_path)
        assert got.returncode == 0, (command, got.stderr)
    assert "spiffe://cluster.local/ns/shop/sa/web" in got.stdout


def test_node_command_is_valid_from_the_clone_root(monkeypatch):
    from meshcore.cli import build_parser
    from meshcore.node.cli import options_from
    from meshcore.sources.config import load
    monkeypatch.chdir(ROOT)
    nodes = [c for c, _ in COMMANDS if c.startswith("meshcore node ")]
    assert nodes
    for command in nodes:
        args = build_parser().parse_args(shlex.split(command)[1:])
        options = options_from(args)
        view = load(options.config_paths, inline=options.inline_config, root_namespace=options.root_namespace)
        assert view.local_workloads(options.node_name), f"{command}: no workload of that node"


@pytest.mark.parametrize("command", [c for c, _ in COMMANDS if c.startswith("python tests/fuzz/run.py")])
def test_fuzz_commands_name_real_targets(command):
    import importlib.util
    spec = importlib.util.spec_from_file_location("fuzz_targets", ROOT / "tests" / "fuzz" / "targets.py")
    targets = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(targets)
    words = [w for w in shlex.split(command)[2:] if not w.startswith("-") and not w.replace(".", "").isdigit()]
    named = [w for w in words if "/" not in w and not w.startswith("<")]
    assert all(w in targets.TARGETS for w in named), command


INLINE = sorted(set(re.findall(r"`((?:pip install \S+ && )?python (\S+\.py)[^`]*)`", (ROOT / "README.md").read_text())))


def test_inline_script_commands_name_scripts_and_options_that_exist():
    """The prose names commands too (`python benchmarks/....py --option`): each script
    is in the clone and takes each option it is shown with."""
    assert len(INLINE) >= 5
    env = dict(os.environ, PYTHONPATH=str(Path(meshcore.__file__).parent.parent))
    for command, script in INLINE:
        assert (ROOT / script).is_file(), command
    running = {script: subprocess.Popen([sys.executable, script, "--help"], cwd=ROOT, env=env, text=True,
                                        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for script in {script for _, script in INLINE}}
    helps = {}
    for script, proc in running.items():
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, (script, err[-2000:])
        helps[script] = set(re.findall(r"--[a-z][a-z-]*", out))
    for command, script in INLINE:
        options = set(re.findall(r"(?<=\s)--[a-z][a-z-]*", command.split(script, 1)[1]))
        assert options <= helps[script], (command, options - helps[script])


def test_waypoint_command_is_valid_from_the_clone_root(monkeypatch):
    from meshcore.cli import build_parser
    from meshcore.sources.config import load
    from meshcore.waypoint.cli import options_from
    from meshcore.waypoint.proxy import own_workload
    monkeypatch.chdir(ROOT)
    waypoints = [c for c, _ in COMMANDS if c.startswith("meshcore waypoint ")]
    assert waypoints
    for command in waypoints:
        options = options_from(build_parser().parse_args(shlex.split(command)[1:]))
        view = load(options.config_paths, inline=options.inline_config, root_namespace=options.root_namespace)
        assert own_workload(view, options.namespace, options.name), f"{command}: no workload for the waypoint"
