"""The `meshcore` command as a new user meets it: every option explained, one error
format, no tracebacks for ordinary mistakes."""
import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

import meshcore
from meshcore.cli import build_parser


def _walk(parser, path=("meshcore",)):
    yield path, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _walk(sub, path + (name,))


def test_every_command_and_option_has_help():
    missing = []
    for path, parser in _walk(build_parser()):
        if not parser.description and len(path) > 1:
            missing.append(" ".join(path) + " (description)")
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)):
                continue
            if not action.help:
                missing.append(f"{' '.join(path)} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def run(tmp_path, *args):
    env = dict(os.environ, PYTHONPATH=str(Path(meshcore.__file__).parent.parent))
    return subprocess.run([sys.executable, "-m", "meshcore", *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("args, message", [
    (("ca", "show", "nothing-here"), "meshcore ca show: error: nothing-here: no such file or directory"),
    (("ca", "init", "--trust-domain", "td", "--dir", "x", "--lifetime", "soon"),
     "meshcore ca init: error: argument --lifetime: 'soon' is not a duration like 24h, 1h30m, 90m or 3650d"),
    (("node", "--config", "missing.yaml"), "meshcore node: error: missing.yaml: cannot read: No such file or directory"),
    (("policy", "check", "missing.yaml"),
     "meshcore policy check: error: missing.yaml: cannot read: No such file or directory"),
])
def test_errors_are_one_line_with_the_command(tmp_path, args, message):
    got = run(tmp_path, *args)
    assert got.returncode == 2
    assert got.stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in got.stderr


def test_ca_show_reads_a_directory_and_issue_refuses_an_unusable_path(tmp_path):
    assert run(tmp_path, "ca", "init", "--trust-domain", "cluster.local", "--dir", "ca").returncode == 0
    shown = run(tmp_path, "ca", "show", "ca")
    assert shown.returncode == 0 and "ca-cert.pem, certificate 0:" in shown.stdout
    (tmp_path / "file").write_text("")
    got = run(tmp_path, "ca", "issue", "--namespace", "a", "--service-account", "b", "--dir", "ca",
              "--out", "file/sub")
    assert got.returncode == 2 and "cannot write the certificate files to file/sub" in got.stderr
    assert "Traceback" not in got.stderr


def test_a_closed_pipe_is_not_a_traceback(tmp_path):
    (tmp_path / "p.yaml").write_text("".join(
        f"---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {{name: p{i}}}\n"
        "spec: {rules: [{}]}\n" for i in range(3000)))
    env = dict(os.environ, PYTHONPATH=str(Path(meshcore.__file__).parent.parent))
    proc = subprocess.Popen([sys.executable, "-m", "meshcore", "policy", "check", "p.yaml"], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()                       # like `| head -1`
    _, err = proc.communicate(timeout=60)
    assert b"Traceback" not in err and b"BrokenPipe" not in err
