"""The fuzz targets in the default run: each over its seeds (and any input that once
failed, kept in tests/fuzz/regressions/<target>/), the harness finding a planted bug,
and every target fuzzed for a few seconds against a clang-instrumented build of the
compiled core with AddressSanitizer. Longer runs: tests/fuzz/run.py."""
import subprocess
import sys
from pathlib import Path

import pytest

import run
import targets

HERE = Path(__file__).resolve().parent
SMOKE_SECONDS = 4


def _inputs(name: str) -> list[bytes]:
    kept = HERE / "regressions" / name
    return targets.seeds(name) + [p.read_bytes() for p in sorted(kept.glob("*"))] if kept.is_dir() \
        else targets.seeds(name)


@pytest.mark.parametrize("name", list(targets.TARGETS))
def test_target_passes_its_seeds(name):
    for data in _inputs(name):
        targets.TARGETS[name](data)


def test_seeds_reach_past_the_error_paths():
    """Seeds that every decoder refused would leave the fuzzer starting from nothing."""
    from meshcore.sources.config import load
    from meshcore.policy.istio import load_authorization_policies
    assert all(load(inline=s.decode()).workloads or load(inline=s.decode()).services
               for s in targets.seeds("node_config") if b"workloads" in s)
    assert load_authorization_policies(targets.seeds("authorization_policy")[0].decode())


def test_the_harness_finds_a_planted_bug(tmp_path):
    """A bug behind three byte comparisons is found, reported as a crash, and the
    failing input is written where run.py says."""
    pytest.importorskip("atheris")
    result = run.run_target("planted", 60, None, tmp_path)
    assert result["crashed"], Path(result["log"]).read_text()[-2000:]
    assert [Path(p).read_bytes()[:3] for p in result["artifacts"]] == [b"HBO"]


def test_replay_as_documented(tmp_path):
    """`run.py TARGET --replay FILE...` replays inputs: a passing one exits 0, the planted
    bug's input fails with its exception."""
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_bytes(b"\x00")
    bad.write_bytes(b"HBO")
    script = str(HERE / "run.py")
    ok = subprocess.run([sys.executable, script, "planted", "--replay", str(good)], capture_output=True, text=True)
    assert ok.returncode == 0 and f"{good}: passes" in ok.stdout, ok.stdout + ok.stderr
    failed = subprocess.run([sys.executable, script, "planted", "--replay", str(good), str(bad)],
                            capture_output=True, text=True)
    assert failed.returncode != 0 and "PlantedBug" in failed.stderr, failed.stdout + failed.stderr


def test_without_clang_the_runner_refuses_unless_told(tmp_path, monkeypatch, capsys):
    """Fuzzing the Python layer alone looks like a clean run of everything: without
    clang the runner stops and says why; --no-native runs and says so on every line."""
    pytest.importorskip("atheris")
    monkeypatch.setattr(run, "WORK", tmp_path)             # no instrumented build cached there
    monkeypatch.setattr(run.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit) as stop:
        run.main(["--seconds", "1", "socks5_request"])
    assert "clang is not installed, so the compiled core cannot be instrumented" in str(stop.value.code)
    assert "--no-native" in str(stop.value.code)
    monkeypatch.undo()
    blind = subprocess.run([sys.executable, str(HERE / "run.py"), "--no-native", "--seconds", "1", "socks5_request"],
                           capture_output=True, text=True, timeout=120)
    assert blind.returncode == 0, blind.stdout + blind.stderr
    assert blind.stderr.startswith("WARNING: --no-native: the compiled core is NOT instrumented")
    line, = [l for l in blind.stdout.splitlines() if l.startswith("socks5_request")]
    assert line.endswith("ok (Python layer only: compiled core not instrumented)")


@pytest.fixture(scope="module")
def instrumented_core():
    pytest.importorskip("atheris")
    return run.build_instrumented_core()


@pytest.mark.needs_tool("clang")
@pytest.mark.parametrize("name", list(targets.TARGETS))
def test_target_fuzzes_clean(name, instrumented_core, tmp_path):
    result = run.run_target(name, SMOKE_SECONDS, instrumented_core, tmp_path)
    log = Path(result["log"]).read_text(errors="replace")
    assert not result["crashed"], log[-4000:]
    assert result["runs"] > 50, log[-2000:]
    assert result["counters"] > 20_000, "the compiled core was not instrumented"
