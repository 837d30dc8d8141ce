"""A CA directory (`--ca-dir`, or the built-in CA) signing in a helper process.

Signing needs cryptography, about 10 MB of a process's memory once imported, and a
node proxy signs only at start, when a workload arrives and at rotation (half a
certificate's lifetime). `CaHelper` is the issuer the node uses then: a child process
(`python -m meshcore.identity.helper`) loads the CA, signs what it is asked for, and
exits after `IDLE_EXIT` seconds without a request; the next request starts it again.
The proxy holds what it answers as PEM (`PemCredentials`) and never imports
cryptography; the CA's private key is never in the proxy's memory either.

The exchange is one JSON line each way: first the child's greeting (the trust domain
and roots, or the error loading the CA), then a certificate (key, chain, validity) or
an error per request.
"""
from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import select
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from meshcore.errors import IdentityError
from meshcore.identity.credentials import DEFAULT_WORKLOAD_LIFETIME, PemCredentials
from meshcore.identity.issuers import state_dir_of
from meshcore.identity.spiffe import SpiffeId
from meshcore.identity.store import TrustBundle
from meshcore.identity.x509util import utcnow

log = logging.getLogger("meshcore.identity")

IDLE_EXIT = 10.0            # seconds without a request before the helper process ends (a rollout is one start)
ANSWER_TIMEOUT = 30.0       # a start (Python, cryptography, the CA's files) and one signature


class CaHelper:
    """An issuer for a CertificateStore whose CA lives in a helper process: the CA of
    `ca_dir`, or the built-in CA under `state_dir` (created on first start for
    `trust_domain`). IdentityError at construction if the CA cannot be loaded."""

    # asynchronous (the event loop runs while it signs) but on this machine: a proxy
    # waits for its answers at start as for a CA in its own process
    local = True

    def __init__(self, *, ca_dir: str | None, state_dir: str | Path | None, trust_domain: str,
                 idle_exit: float = IDLE_EXIT):
        self.args = ["--ca-dir", str(ca_dir)] if ca_dir else ["--state-dir", str(state_dir_of(state_dir)),
                                                             "--trust-domain", trust_domain]
        self.idle_exit = idle_exit
        self._lock = threading.Lock()          # one exchange at a time on the pipes
        self._proc: subprocess.Popen | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._thread: ThreadPoolExecutor | None = None
        self._last = 0.0
        self.requests = 0
        self.starts = 0
        with self._lock:
            hello = self._start()
        self.trust_domain: str = hello["trust_domain"]
        self.bundle = TrustBundle.from_checked_pem(hello["roots"].encode("ascii"))
        if hello.get("created"):
            log.info("created a built-in CA for trust domain %s in %s", self.trust_domain, hello["created"])

    # -- the issuer's interface -----------------------------------------------------------
    def issue(self, identity: SpiffeId, *, lifetime: dt.timedelta = DEFAULT_WORKLOAD_LIFETIME,
              now: dt.datetime | None = None) -> PemCredentials:
        """Blocks while the helper signs (and starts, ~0.3 s, when it is not running)."""
        return self._credentials(identity, self._exchange(self._request(identity, lifetime, now)))

    async def issue_async(self, identity: SpiffeId, *, lifetime: dt.timedelta = DEFAULT_WORKLOAD_LIFETIME,
                          now: dt.datetime | None = None) -> PemCredentials:
        answer = await asyncio.get_running_loop().run_in_executor(
            self._own_thread(), self._exchange, self._request(identity, lifetime, now))
        self._arm_idle_exit()
        return self._credentials(identity, answer)

    async def close(self) -> None:
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        await asyncio.get_running_loop().run_in_executor(self._own_thread(), self._stop)
        self._end_thread()

    def _own_thread(self) -> ThreadPoolExecutor:
        if self._thread is None:
            # one thread of its own for the exchanges (they take turns on the pipes anyway),
            # ended with the helper: an idle proxy keeps no thread for it
            self._thread = ThreadPoolExecutor(1, thread_name_prefix="meshcore-ca")
        return self._thread

    def _end_thread(self) -> None:
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.shutdown(wait=False)

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    # -- the exchange ---------------------------------------------------------------------
    @staticmethod
    def _request(identity: SpiffeId, lifetime: dt.timedelta, now: dt.datetime | None) -> dict:
        return {"identity": identity.uri, "lifetime": lifetime.total_seconds(), "now": (now or utcnow()).timestamp()}

    @staticmethod
    def _credentials(identity: SpiffeId, answer: dict) -> PemCredentials:
        def when(ts: float) -> dt.datetime:
            return dt.datetime.fromtimestamp(ts, dt.timezone.utc)
        return PemCredentials(identity, answer["key"].encode("ascii"), answer["chain"].encode("ascii"),
                              when(answer["not_before"]), when(answer["not_after"]))

    def _exchange(self, request: dict) -> dict:
        line = json.dumps(request).encode() + b"\n"
        with self._lock:
            self.requests += 1
            for attempt in (1, 2):
                if not self.running:
                    self._reap()
                    self._start()
                try:
                    self._proc.stdin.write(line)
                    self._proc.stdin.flush()
                    answer = self._read()
                    break
                except (OSError, EOFError) as exc:
                    # ended meanwhile (killed, or its idle exit crossed this request): once more
                    self._reap()
                    if attempt == 2:
                        raise IdentityError(f"the CA helper process ended without an answer ({exc})") from None
            self._last = time.monotonic()
        if "error" in answer:
            raise IdentityError(answer["error"])
        return answer

    def _start(self) -> dict:
        # the child imports meshcore from where this process did (a checkout or an install)
        package_root = str(Path(__file__).resolve().parent.parent.parent)
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
        self._proc = subprocess.Popen([sys.executable, "-m", "meshcore.identity.helper", *self.args],
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        self.starts += 1
        try:
            hello = self._read()
        except EOFError:
            self._reap()
            raise IdentityError("the CA helper process ended at its start (its error is above)") from None
        if "error" in hello:
            self._reap()
            raise IdentityError(hello["error"])
        return hello

    def _read(self) -> dict:
        if not select.select([self._proc.stdout], [], [], ANSWER_TIMEOUT)[0]:
            self._proc.kill()
            raise EOFError(f"no answer within {ANSWER_TIMEOUT:.0f} s")
        line = self._proc.stdout.readline()
        if not line:
            raise EOFError("no answer")
        return json.loads(line)

    def _reap(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None:
            return
        for stream in (proc.stdin, proc.stdout):
            try:
                stream.close()
            except OSError:
                pass
        try:
            proc.wait(ANSWER_TIMEOUT)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def _stop(self) -> None:
        with self._lock:
            self._reap()               # its stdin closed: it exits

    # -- idle exit ------------------------------------------------------------------------
    def _arm_idle_exit(self) -> None:
        if self._idle is None:
            self._idle = asyncio.get_running_loop().call_later(self.idle_exit, self._idle_check)

    def _idle_check(self) -> None:
        self._idle = None
        quiet = time.monotonic() - self._last
        if quiet < self.idle_exit or self._lock.locked():
            self._idle = asyncio.get_running_loop().call_later(max(self.idle_exit - quiet, 1.0), self._idle_check)
            return
        if self.running:
            # stopping waits for the child to exit: on the helper's thread, which ends then
            asyncio.get_running_loop().run_in_executor(self._own_thread(), self._stop)
            self._end_thread()


# ------------------------------------------------------------------ the helper process

def _reply(message: dict) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    import argparse

    from meshcore.identity.issuers import certificate_authority
    from meshcore.identity.x509util import certs_pem
    p = argparse.ArgumentParser(prog="python -m meshcore.identity.helper",
                                description="meshcore's CA helper process (started by a node proxy)")
    p.add_argument("--ca-dir")
    p.add_argument("--state-dir")
    p.add_argument("--trust-domain", default="cluster.local")
    args = p.parse_args(argv)
    # Ctrl-C in the proxy's terminal reaches its process group: the proxy decides when
    # the helper ends (it closes the helper's stdin), so no second traceback here
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        existed = args.ca_dir or (Path(args.state_dir) / "ca" / "ca-cert.pem").exists()
        ca = certificate_authority(args.ca_dir, args.state_dir, args.trust_domain)
    except IdentityError as exc:
        _reply({"error": str(exc)})
        return 2
    _reply({"trust_domain": ca.trust_domain, "roots": certs_pem(ca.roots).decode("ascii"),
            "created": "" if existed else str(Path(args.state_dir) / "ca")})
    for line in sys.stdin:
        try:
            request = json.loads(line)
            identity = SpiffeId.parse(request["identity"])
            creds = ca.issue(identity, lifetime=dt.timedelta(seconds=request["lifetime"]),
                             now=dt.datetime.fromtimestamp(request["now"], dt.timezone.utc))
        except IdentityError as exc:
            _reply({"error": str(exc)})
            continue
        _reply({"key": creds.key_pem().decode("ascii"), "chain": creds.chain_pem().decode("ascii"),
                "not_before": creds.not_before.timestamp(), "not_after": creds.not_after.timestamp()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
