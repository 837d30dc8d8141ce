"""Coverage-guided fuzzing of meshcore with atheris (libFuzzer for Python).

    python tests/fuzz/run.py                          # every target, 60 s each
    python tests/fuzz/run.py --seconds 3600 server_connection hpack_decoder
    python tests/fuzz/run.py --no-native --seconds 10  # the Python layer only, no clang

By default (--native; without clang it refuses to run) the compiled core is rebuilt with
clang's `-fsanitize=address,fuzzer-no-link` into build/fuzz/core-<hash>/ (cached by a
hash of the sources), so libFuzzer sees the branches inside the Cython code and
AddressSanitizer stops at the first out-of-bounds access; the Python modules are
instrumented by atheris. The corpus grows in build/fuzz/corpus/<target>/ (seeded from
tests/fuzz/targets.py) and carries over between runs; an input that fails is written
to build/fuzz/crashes/<target>/ and replays with

    python tests/fuzz/run.py <target> --replay build/fuzz/crashes/<target>/crash-...

Needs `pip install atheris` (Linux x86_64 wheels for CPython 3.11-3.13) and Debian's
clang. --no-native fuzzes without it, but then only meshcore's Python code is
coverage-guided: the compiled HTTP/2, HPACK, frame and policy code is run blind and
without AddressSanitizer, and every line of the report says so.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
WORK = ROOT / "build" / "fuzz"
if str(HERE) not in sys.path:              # targets.py, imported late (see fuzz_one)
    sys.path.insert(0, str(HERE))


def _sources_hash() -> str:
    h = hashlib.sha256()
    for folder in (ROOT / "src", ROOT / "meshcore"):
        for path in sorted(folder.rglob("*")):
            if path.is_file() and path.suffix in (".pyx", ".pxd", ".py", ".pyi"):
                h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    h.update((ROOT / "setup.py").read_bytes())
    return h.hexdigest()[:16]


def build_instrumented_core() -> Path:
    """A copy of the meshcore package whose extensions carry libFuzzer's coverage
    counters and AddressSanitizer: build/fuzz/core-<hash>/meshcore."""
    target = WORK / f"core-{_sources_hash()}"
    if (target / "meshcore").is_dir():
        return target
    clang = shutil.which("clang")
    if clang is None:
        raise SystemExit("run.py: error: clang is not installed, so the compiled core cannot be instrumented "
                         "(no coverage guidance inside it, no AddressSanitizer): install clang (apt-get install "
                         "clang), or pass --no-native to fuzz meshcore's Python layer only")
    tmp = WORK / "building-core"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(ROOT / "meshcore", tmp / "meshcore",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    flags = "-fsanitize=address,fuzzer-no-link -fno-omit-frame-pointer"
    env = dict(os.environ, CC=clang, CFLAGS=flags, LDSHARED=f"{clang} -shared")
    done = subprocess.run([sys.executable, "setup.py", "-q", "build_ext", "--parallel", str(os.cpu_count() or 1),
                           "--force", "-b", str(tmp), "-t", str(WORK / "building-objects")],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode:
        raise SystemExit(f"building the instrumented core failed:\n{done.stderr[-4000:]}")
    shutil.rmtree(WORK / "building-objects", ignore_errors=True)
    for old in WORK.glob("core-*"):          # builds of older sources
        shutil.rmtree(old, ignore_errors=True)
    tmp.rename(target)
    return target


def _atheris_preload() -> str:
    import atheris
    return str(Path(atheris.path()) / "asan_with_fuzzer.so")


def fuzz_one(name: str, libfuzzer_args: list[str]) -> None:
    """In the fuzzing process: instrument meshcore's Python, then hand over to libFuzzer."""
    import atheris
    with atheris.instrument_imports(include=["meshcore", "targets"]):
        import targets
    test = {**targets.TARGETS, **targets.EXTRA_TARGETS}[name]
    atheris.Setup([sys.argv[0], *libfuzzer_args], test)
    atheris.Fuzz()


def replay(name: str, paths: list[str]) -> int:
    import targets
    test = {**targets.TARGETS, **targets.EXTRA_TARGETS}[name]
    for path in paths:
        print(f"{path}: ", end="", flush=True)
        test(Path(path).read_bytes())
        print("passes")
    return 0


def _seed(name: str, corpus: Path) -> None:
    import targets
    corpus.mkdir(parents=True, exist_ok=True)
    for data in targets.seeds(name):
        (corpus / f"seed-{hashlib.sha1(data).hexdigest()}").write_bytes(data)


def run_target(name: str, seconds: float, native: Path | None, work: Path = WORK) -> dict:
    """One target in its own process for `seconds`, its corpus, crashes and log under
    `work`: {"runs", "coverage", "counters", "crashed", "artifacts", "log"}."""
    corpus = work / "corpus" / name
    crashes = work / "crashes" / name
    log = work / "logs" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.log"
    _seed(name, corpus)
    crashes.mkdir(parents=True, exist_ok=True)
    before = set(crashes.iterdir())
    env = dict(os.environ, PYTHONHASHSEED="0")
    if native is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(native), env.get("PYTHONPATH")]))
        env["LD_PRELOAD"] = _atheris_preload()
        env["ASAN_OPTIONS"] = "detect_leaks=0:allocator_may_return_null=1:quarantine_size_mb=32"
    args = [f"-max_total_time={max(1, int(seconds))}", f"-artifact_prefix={crashes}/",
            "-rss_limit_mb=3072", "-timeout=20", "-detect_leaks=0", "-print_final_stats=1", str(corpus)]
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.run([sys.executable, __file__, "--in-process", name, "--", *args],
                              env=env, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    text = log.read_text(errors="replace")
    runs = re.findall(r"stat::number_of_executed_units:\s*(\d+)", text) or re.findall(r"#(\d+)\s", text)
    coverage = re.findall(r"cov: (\d+)", text)
    counters = re.findall(r"Loaded \d+ modules\s+\((\d+) inline 8-bit counters\)", text)
    return {"runs": int(runs[-1]) if runs else 0, "coverage": int(coverage[-1]) if coverage else 0,
            "counters": sum(int(c) for c in counters), "crashed": proc.returncode != 0,
            "artifacts": sorted(str(p) for p in set(crashes.iterdir()) - before), "log": str(log)}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--in-process"]:
        fuzz_one(argv[1], argv[3:])
        return 0
    import targets
    parser = argparse.ArgumentParser(description="Coverage-guided fuzzing of meshcore with atheris.")
    parser.add_argument("targets", nargs="*", metavar="TARGET",
                        help=f"targets to run (default: all): {', '.join(targets.TARGETS)}")
    parser.add_argument("--seconds", type=float, default=60, help="how long each target runs (default 60)")
    parser.add_argument("--native", action=argparse.BooleanOptionalAction, default=True,
                        help="fuzz a clang-instrumented build of the compiled core (default; needs clang). "
                             "--no-native: the Python layer only, the compiled core run blind")
    parser.add_argument("--replay", nargs="+", metavar="FILE",
                        help="run one target (named before --replay) over these inputs and stop")
    args = parser.parse_args(argv)
    known = {**targets.TARGETS, **targets.EXTRA_TARGETS}
    names = args.targets or list(targets.TARGETS)
    unknown = [n for n in names if n not in known]
    if unknown:
        parser.error(f"unknown target {', '.join(unknown)}; choose from {', '.join(known)}")
    if args.replay:
        if len(names) != 1:
            parser.error("--replay takes exactly one target")
        return replay(names[0], args.replay)
    native = build_instrumented_core() if args.native else None
    if native is None:
        print("WARNING: --no-native: the compiled core is NOT instrumented. Only meshcore's Python code guides "
              "the fuzzer; the Cython HTTP/2, HPACK, frame and policy code runs without coverage feedback or "
              "AddressSanitizer, so an out-of-bounds access there goes unseen.", file=sys.stderr, flush=True)
    failed = False
    print(f"{'target':24} {'runs':>10} {'runs/s':>8} {'coverage':>9}  outcome")
    for name in names:
        result = run_target(name, args.seconds, native)
        clean = "ok" if native is not None else "ok (Python layer only: compiled core not instrumented)"
        outcome = "CRASH " + " ".join(result["artifacts"]) if result["crashed"] else clean
        print(f"{name:24} {result['runs']:>10} {result['runs'] / args.seconds:>8.0f} {result['coverage']:>9}  "
              f"{outcome}", flush=True)
        if result["crashed"]:
            failed = True
            print(f"  log: {result['log']}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
