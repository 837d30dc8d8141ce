"""What every proxy mode serves and does as a process: the HTTP endpoints (admin 15000,
metrics 15020, readiness 15021) and their shared routes, reloads, signals, the loop.

A deliberately small HTTP/1.1 server (one request per connection, no bodies in,
answers of a few hundred KiB at most) for localhost operators and Prometheus.
"""
from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from urllib.parse import parse_qs, urlsplit

log = logging.getLogger("meshcore.admin")

# handler(method, query) -> (status, content type, body)
Handler = Callable[[str, dict], Awaitable[tuple[int, str, bytes]] | tuple[int, str, bytes]]
_REASONS = {200: "OK", 400: "Bad Request", 404: "Not Found", 405: "Method Not Allowed", 500: "Internal Server Error"}
MAX_HEAD = 16 * 1024


class HttpEndpoints:
    def __init__(self, routes: dict[str, Handler]):
        self.routes = routes
        self.server: asyncio.AbstractServer | None = None

    async def start(self, host: str, port: int) -> "HttpEndpoints":
        self.server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEAD)
        return self

    @property
    def address(self) -> tuple:
        return self.server.sockets[0].getsockname()[:2]

    async def close(self) -> None:
        if self.server is not None:
            self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            url = urlsplit(target)
            handler = self.routes.get(url.path)
            if handler is None:
                status, ctype, body = 404, "text/plain", f"no endpoint {url.path}; try: {', '.join(self.routes)}\n".encode()
            else:
                answer = handler(method, parse_qs(url.query))
                status, ctype, body = await answer if asyncio.iscoroutine(answer) else answer
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ValueError,
                ConnectionError):
            writer.close()
            return
        except Exception:
            log.exception("admin endpoint failed")
            status, ctype, body = 500, "text/plain", b"internal error (see the node's log)\n"
        writer.write(f"HTTP/1.1 {status} {_REASONS.get(status, 'Unknown')}\r\nContent-Type: {ctype}\r\n"
                     f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
        try:
            await writer.drain()
        except ConnectionError:
            pass
        writer.close()


def text(status: int, body: str) -> tuple[int, str, bytes]:
    return status, "text/plain; charset=utf-8", body.encode()


# -- the routes every proxy mode serves (node and waypoint alike) ----------------------

def logging_route(method: str, query: dict) -> tuple[int, str, bytes]:
    """POST /logging?level=...: change log levels at run time, as ztunnel's admin does."""
    from meshcore.node import logs
    if method != "POST":
        return text(405, "POST /logging?level=<level> (trace, debug, info, warn, error, off; "
                         "or target=level,... such as access=warn,info)\n")
    level = (query.get("level") or [""])[0]
    try:
        logs.set_level(level)
    except ValueError as exc:
        return text(400, f"{exc}\n")
    return text(200, f"current log level is {level}\n")


def quit_route(spawn: Callable, drain: Callable) -> Handler:
    """POST /quitquitquit: drain and exit, in a task the proxy owns (`spawn`)."""
    def route(method: str, query: dict):
        if method != "POST":
            return text(405, "POST /quitquitquit to drain and exit\n")
        asyncio.get_running_loop().call_soon(spawn, drain())
        return text(200, "shutdown now\n")
    return route


def metrics_route(metrics) -> Handler:
    return lambda method, query: (200, "text/plain; version=0.0.4; charset=utf-8", metrics.exposition())


def ready_route(pending: Callable[[], list[str]]) -> Handler:
    """GET /healthz/ready: 200, or 500 naming what is pending."""
    def route(method: str, query: dict):
        waiting = pending()
        if waiting:
            # what is pending, not why: the probe port is open to the pod network, and the
            # reasons (resource names, istiod's errors) are in the log and /config_dump
            return text(500, f"not ready, pending: {', '.join(sorted({': '.join(p.split(': ')[:2]) for p in waiting}))}\n")
        return text(200, "ready\n")
    return route


async def start_endpoints(routes: dict[str, dict[str, Handler]], listen: dict, into: list) -> None:
    """One HttpEndpoints per listener name in `routes` that `listen` does not turn off,
    each appended to `into` (their owner closes them) as it starts; ListenerError
    (which, where, why) for one that cannot bind."""
    from meshcore.node.context import listener_error
    for name, table in routes.items():
        if listen[name] is None:
            continue
        try:
            into.append(await HttpEndpoints(table).start(*listen[name]))
        except OSError as exc:
            raise listener_error(name, listen[name], exc) from None


# -- a proxy as a process --------------------------------------------------------------

def run_event_loop(coro) -> int:
    """Run a proxy's main coroutine on uvloop when it is installed."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


async def serve_until_stopped(proxy) -> None:
    """Start `proxy`, then SIGTERM/SIGINT drain it and SIGHUP reloads it, each in a task
    the proxy owns (`spawn`), until it has stopped."""
    import signal
    await proxy.start()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, lambda: proxy.spawn(proxy.drain()))
    loop.add_signal_handler(signal.SIGINT, lambda: proxy.spawn(proxy.drain()))
    loop.add_signal_handler(signal.SIGHUP, lambda: proxy.spawn(proxy.reload_safely("SIGHUP")))
    await proxy.stopped.wait()


class ProxyProcess:
    """What a proxy mode (node, waypoint) does as a process beyond its wiring: reloads
    of its files (on change, on SIGHUP) that never end their caller, and the tasks that
    signals and admin calls start, owned until they end. The mode provides `log`,
    `files`, `metrics`, `certificates`, `options.reload_interval`, `loaded_at`, a
    `_background` set, and `applied(reason, applied)` to say what a reload changed."""

    def freeze_startup_heap(self) -> None:
        """Once, after start-up loaded the configuration and before any connection:
        what start-up loaded lives long and holds no cycles (what a reload replaces is
        freed by reference counting, frozen or not), so the cyclic collector is told to
        leave it alone. A full collection scans every object: with 10,000 workloads,
        services and policies that is ~185 ms with the loop stopped, and an unfrozen
        proxy's generation-2 collections under traffic pause it 25-46 ms. Never per
        reload: a connection's objects would be frozen with it."""
        import gc
        from meshcore.aio.memory import trimmer
        gc.collect()
        gc.freeze()
        # parsing and compiling left free heap behind (~0.5 MB at 1,000 workloads,
        # services and policies): given back to the system
        trimmer.trim_now()

    async def reload(self, reason: str) -> bool:
        """Read the configuration and certificate files again and put what changed in
        force; a refused configuration keeps the one in force (logged and counted)."""
        from meshcore.errors import ConfigError
        await self.certificates.rotate()
        try:
            applied = await self.files.reload()
        except ConfigError as exc:
            self.metrics.config_reloads.labels("refused").inc()
            self.log.error("configuration refused (%s), the previous one stays in force: %s", reason, exc)
            return False
        self.metrics.config_reloads.labels("applied").inc()
        if applied.changed:
            self.loaded_at = time.time()
        self.applied(reason, applied)
        return True

    async def reload_safely(self, reason: str) -> bool:
        """reload(), with a failure that is not the configuration's logged and counted
        instead of ending the caller (the file watcher, a signal handler)."""
        try:
            return await self.reload(reason)
        except Exception:
            self.metrics.config_reloads.labels("failed").inc()
            self.log.exception("reload (%s) failed; the configuration in force stays", reason)
            return False

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.options.reload_interval)
            if self.files.changed_on_disk():
                await self.reload_safely("files changed")

    def spawn(self, coro) -> asyncio.Task:
        """Run a reload or drain that a signal or an admin call asked for, owned here."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task
