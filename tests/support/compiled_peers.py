"""Independent HBONE peers in compiled languages, built from tests/peers/ by the tests
themselves and cached under build/test-peers/ by a hash of their sources."""
from __future__ import annotations

import asyncio
import functools
import hashlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from meshcore.identity import TrustBundle

ROOT = Path(__file__).resolve().parents[2]
PEERS = ROOT / "tests" / "peers"
CACHE = ROOT / "build" / "test-peers"


def _source_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def build_go_peer() -> Path:
    """tests/peers/go (Go's net/http HTTP/2; no modules, so it builds offline)."""
    source = PEERS / "go"
    binary = CACHE / f"hbonepeer-go-{_source_hash(source)}"
    if not binary.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, GOPROXY="off", GOFLAGS="-mod=mod", GOTOOLCHAIN="local",
                   GOCACHE=str(CACHE / "gocache"), GOPATH=str(CACHE / "gopath"))
        tmp = binary.with_suffix(".tmp")
        subprocess.run([shutil.which("go"), "build", "-o", str(tmp), "."], cwd=source, env=env,
                       check=True, capture_output=True, timeout=300)
        tmp.rename(binary)
    return binary


DEBIAN_CRATES = Path("/usr/share/cargo/registry")
RUST_CRATES = ("h2-0.3", "tokio-rustls-0.23", "rustls-0.20", "rustls-pemfile-1", "webpki-0.22")
CARGO_OFFLINE = """[source.crates-io]
replace-with = "debian"
[source.debian]
directory = "/usr/share/cargo/registry"
[net]
offline = true
"""


def build_rust_peer() -> Path:
    """tests/peers/rust (the h2 crate, tokio and rustls), built offline against Debian's
    packaged crates. The sources are copied next to the cache so that the Cargo.lock a
    build writes never changes the checkout."""
    source = PEERS / "rust"
    have = {p.name for p in DEBIAN_CRATES.iterdir()} if DEBIAN_CRATES.is_dir() else set()
    missing = [c for c in RUST_CRATES if not any(name.startswith(c + ".") for name in have)]
    if missing:
        pytest.skip(f"Debian's Rust crates are not installed in {DEBIAN_CRATES}: {', '.join(missing)} "
                    "(apt-get install librust-h2-dev librust-tokio-rustls-dev librust-rustls-pemfile-dev)")
    digest = _source_hash(source)
    binary = CACHE / f"hbonepeer-rust-{digest}"
    if not binary.exists():
        work = CACHE / f"rust-src-{digest}"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(source, work)
        (work / ".cargo").mkdir(exist_ok=True)
        (work / ".cargo" / "config.toml").write_text(CARGO_OFFLINE)
        env = dict(os.environ, CARGO_TARGET_DIR=str(CACHE / "rust-target"))
        done = subprocess.run([shutil.which("cargo"), "build", "--release", "--quiet"], cwd=work, env=env,
                              capture_output=True, text=True, timeout=600)
        if done.returncode:
            raise RuntimeError(f"building the Rust HBONE peer failed:\n{done.stderr[-4000:]}")
        tmp = binary.with_suffix(".tmp")
        shutil.copy(CACHE / "rust-target" / "release" / "hbonepeer", tmp)
        tmp.rename(binary)
        shutil.rmtree(work, ignore_errors=True)
    return binary


TOOLCHAINS = {"go": "go", "rust": "cargo"}


@functools.cache
def peer_binary(kind: str) -> Path:
    """The built peer of `kind` ("go" or "rust"), once per test session."""
    return {"go": build_go_peer, "rust": build_rust_peer}[kind]()


def identity_files(ca, identity, folder: Path) -> dict:
    """PEM files of `identity` issued by `ca`: {"cert", "key", "ca"} paths."""
    folder.mkdir(parents=True, exist_ok=True)
    creds = ca.issue(identity)
    name = identity.service_account
    paths = {"cert": folder / f"{name}.crt", "key": folder / f"{name}.key", "ca": folder / "root.pem"}
    paths["cert"].write_bytes(creds.chain_pem())
    paths["key"].write_bytes(creds.key_pem())
    paths["ca"].write_bytes(TrustBundle(ca.roots).pem())
    return {k: str(v) for k, v in paths.items()}


class PeerProcess:
    """A peer binary that prints `listening HOST:PORT` once ready; its log goes to a
    file (read it as `.log` after exit)."""

    def __init__(self, argv: list[str], log_path: Path):
        self.argv = argv
        self.log_path = log_path
        self.proc: asyncio.subprocess.Process | None = None
        self.address: tuple[str, int] | None = None

    async def __aenter__(self) -> "PeerProcess":
        with open(self.log_path, "wb") as log:
            self.proc = await asyncio.create_subprocess_exec(*self.argv, stdout=asyncio.subprocess.PIPE,
                                                             stderr=log)
        line = (await asyncio.wait_for(self.proc.stdout.readline(), 30)).decode()
        if not line.startswith("listening "):
            await self.proc.wait()
            raise RuntimeError(f"{self.argv[0]} did not start: {line!r} {self.log[-2000:]}")
        host, _, port = line.split()[1].rpartition(":")
        self.address = (host, int(port))
        return self

    async def __aexit__(self, *exc) -> None:
        if self.proc.returncode is None:
            self.proc.terminate()
        await self.proc.wait()

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")
