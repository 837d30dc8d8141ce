"""Load through the waypoint with real HTTP tools: a LocalMesh whose web workload's
HTTP (:8080) is nginx answering a fixed 200 with keep-alive (meshcore.localworkload
closes every connection after one answer, which would measure connection setup rather
than requests), SOCKS5 forwarders for wrk, wrk's output parsed, and what the proxies'
processes hold (/proc). Shared by tests/waypoint/test_waypoint_load.py and
benchmarks/waypoint_http.py."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

from meshcore.localmesh import LocalMesh

FORWARDER = Path(__file__).resolve().parent / "socks_forwarder.py"
BODY = "hello from web\n"

BACKEND_CONF = """\
daemon off;
master_process off;
worker_processes 1;
error_log {dir}/nginx-backend.err warn;
pid {dir}/nginx-backend.pid;
events {{ worker_connections 4096; }}
http {{
    log_format counted $status;
    access_log {access_log};
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    client_body_temp_path {dir}/nginx-body;
    proxy_temp_path {dir}/nginx-proxy;
    server {{
        listen {web}:8080 reuseport;
        location / {{ default_type text/plain; return 200 "{body}"; }}
    }}
    server {{
        listen {web}:8081 http2;
        location / {{ default_type text/plain; return 200 "{body}"; }}
    }}
}}
"""

# nginx as a plain reverse proxy in front of the same backend: one worker, kept-alive
# upstream connections as the waypoint keeps them
PROXY_CONF = """\
daemon off;
worker_processes 1;
user root;
error_log {dir}/nginx-proxy.err warn;
pid {dir}/nginx-proxy.pid;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    keepalive_requests 1000000;
    client_body_temp_path {dir}/nginx-proxy-body;
    proxy_temp_path {dir}/nginx-proxy-temp;
    upstream backend {{ server {web}:8080; keepalive 64; }}
    server {{
        listen {listen};
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"""


class NginxMesh(LocalMesh):
    """LocalMesh with nginx as the web workload's HTTP server; `access_log`: count the
    requests it answered (off for benchmarks). Port 81 of web and web-l7 is nginx's h2c
    (prior knowledge) on web:8081, for HTTP/2 load."""

    H2_PORT = 81

    def mesh_text(self) -> str:
        text = super().mesh_text()
        for before in ('"shop/web-l7.shop.svc.cluster.local": {80: 8080}', "ports: {80: 8080}\n  waypoint:",
                       "ports: {80: 8080, 9000: 9000}\n", '"shop/web.shop.svc.cluster.local": {80: 8080, 9000: 9000}'):
            if before not in text:
                raise RuntimeError(f"LocalMesh's configuration changed shape: {before!r} is gone")
            text = text.replace(before, before.replace("{80: 8080", "{80: 8080, 81: 8081"))
        return text

    def __init__(self, directory, *, access_log: bool = True, **kwargs):
        super().__init__(directory, **kwargs)
        self.access_log = self.dir / "nginx-backend.access" if access_log else None

    def start(self, timeout: float = 30.0) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        conf = self.dir / "nginx-backend.conf"
        conf.write_text(BACKEND_CONF.format(dir=self.dir, web=self.web, body=BODY.replace("\n", "\\n"),
                                            access_log=f"{self.access_log} counted" if self.access_log else "off"))
        self.processes["nginx"] = subprocess.Popen(["nginx", "-p", str(self.dir), "-c", str(conf)],
                                                   stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
                                                   start_new_session=True)
        super().start(timeout)

    def _spawn(self, name, args):
        if name == "web":                             # nginx has its HTTP port; the echo port stays
            i = args.index("--http")
            args = args[:i] + args[i + 2:]
        return super()._spawn(name, args)

    def backend_requests(self) -> int:
        """Requests nginx answered so far (unbuffered access log: one line each)."""
        try:
            return len(self.access_log.read_bytes().splitlines())
        except FileNotFoundError:
            return 0

    def forwarder(self, target: str, port: int = 80) -> "Forwarder":
        return Forwarder(self.node["node-a"], self.client, target, port)


class Forwarder:
    """tests/support/socks_forwarder.py as a process: 127.0.0.1:<port> → node-a's SOCKS5
    from `source` → target:port."""

    def __init__(self, node: str, source: str, target: str, port: int):
        self.proc = subprocess.Popen([sys.executable, str(FORWARDER), "--socks", f"{node}:15080", "--source", source,
                                      "--target", f"{target}:{port}"], stdout=subprocess.PIPE, text=True,
                                     start_new_session=True)
        line = self.proc.stdout.readline()
        if not line.startswith("listening "):
            self.proc.kill()
            raise RuntimeError(f"the SOCKS5 forwarder did not start: {line!r}")
        self.host, _, port_text = line.split()[1].rpartition(":")
        self.port = int(port_text)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class NginxProxy:
    """nginx as a reverse proxy (one worker process) on `listen`, to web:8080."""

    def __init__(self, directory: Path, web: str, listen: str):
        self.dir = Path(directory)
        conf = self.dir / "nginx-proxy.conf"
        conf.write_text(PROXY_CONF.format(dir=self.dir, web=web, listen=listen))
        self.listen = listen
        self.proc = subprocess.Popen(["nginx", "-p", str(self.dir), "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        host, _, port = listen.rpartition(":")
        deadline = time.monotonic() + 10
        while LocalMesh.http_get(host, int(port), "/", timeout=1)[0] != 200:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nginx (reverse proxy) did not start: "
                                   + (self.dir / "nginx-proxy.err").read_text(errors="replace")[-1000:])
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://{self.listen}/"

    def worker_pids(self) -> list[int]:
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()
        return [int(p) for p in children]

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()


# ---------------------------------------------------------------------------- wrk

_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}


def _seconds(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def parse_wrk(output: str) -> dict:
    """wrk's summary: requests, rate, latency percentiles (--latency), and every failure
    it counts (socket errors by kind, non-2xx/3xx responses; absent lines are zero)."""
    m = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    if m is None:
        raise ValueError(f"not wrk output:\n{output}")
    out = {"requests": int(m.group(1)), "duration_s": _seconds(m.group(2) + m.group(3)),
           "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", output).group(1)),
           "connect_errors": 0, "read_errors": 0, "write_errors": 0, "timeouts": 0, "non_2xx_3xx": 0}
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    if errors:
        out.update(zip(("connect_errors", "read_errors", "write_errors", "timeouts"), map(int, errors.groups())))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        out["non_2xx_3xx"] = int(non2xx.group(1))
    for pct, value in re.findall(r"^\s+(50|75|90|99)%\s+(\S+)$", output, re.M):
        out[f"p{pct}_ms"] = _seconds(value) * 1e3
    out["failures"] = sum(out[k] for k in ("connect_errors", "read_errors", "write_errors", "timeouts",
                                           "non_2xx_3xx"))
    return out


def wrk(url: str, *, seconds: float, connections: int = 16, threads: int = 1, timeout: float = 5.0,
        cpus: set[int] | None = None) -> dict:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{max(1, round(seconds))}s", f"--timeout={max(1, round(timeout))}s", "--latency", url]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + timeout + 30,
                          preexec_fn=(lambda: os.sched_setaffinity(0, cpus)) if cpus else None)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr or proc.stdout}")
    return parse_wrk(proc.stdout) | {"output": proc.stdout}


# ---------------------------------------------------------------------------- /proc

def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def requests_total(metrics: str, **labels: str) -> int:
    """The sum of istio_requests_total over the series whose labels include `labels`."""
    total = 0.0
    for m in re.finditer(r"^istio_requests_total\{([^}]*)\} ([\d.e+]+)$", metrics, re.M):
        series = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        if all(series.get(k) == v for k, v in labels.items()):
            total += float(m.group(2))
    return int(total)
