"""The composition root: one trio program, one root nursery, everything wired by hand.

``Daemon.run`` owns, inside ``trio_asyncio.open_loop()``: the database pool, the actor system and
the HTTP front (Hypercorn as one child of the root nursery, never the owner of the actors).
It publishes readiness (``task_status.started`` and systemd ``READY=1``) only once every part
is up; every node's heartbeat timeout counts from that moment. On :meth:`Daemon.stop` it freezes
the node deadlines at once (no node goes Offline, nothing is requeued on the way out), stops the
self-driven actors, stops accepting, lets in-flight requests finish within the grace period,
stops the actors and returns (DESIGN §8).
"""

from __future__ import annotations

import gc
import logging
import signal
from collections.abc import Callable, Sequence
from pathlib import Path

import attrs
import hypercorn.config
import hypercorn.trio
import trio
import trio_asyncio

from flatrender import logs, systemd
from flatrender.actors.system import ActorSystem
from flatrender.config import Config, ConfigError
from flatrender.http.app import create_app
from flatrender.http.common import AppState
from flatrender.persistence.db import open_database
from flatrender.persistence.migrate import check_current
from flatrender.storage import MinioStore, StorageUnavailable

log = logging.getLogger("flatrender.daemon")

# Time the actors get to finish the message in hand once the HTTP front has drained.
STOP_ACTORS_SEC = 3.0
WS_PING_INTERVAL_SEC = 20.0
# Keys whose change needs a restart: a reload keeps the old value and says so. What the
# listening socket, the database pool and the object store were built from; the store does take
# new credentials and a new presign lifetime (MinioStore.reconfigure). Another server or bucket
# is not a live change: every stored key (exports, replicas, segments in flight) would point
# at objects that are not there, and the Reaper and validators would act on that.
RESTART_ONLY = (
    ("http", "host"),
    ("http", "port"),
    ("database", "url"),
    ("database", "pool_min"),
    ("database", "pool_max"),
    ("s3", "endpoint"),
    ("s3", "bucket"),
    ("s3", "region"),
    ("s3", "secure"),
    ("s3", "max_threads"),
)


@attrs.define
class Daemon:
    config: Config
    config_path: Path | None = None
    # Listening sockets handed over by systemd (fds); empty: bind host/port from config.
    listen_fds: Sequence[int] = ()
    # How the configuration is read at start and on reload: the same checks both times.
    loader: Callable[[Path | None], Config] = Config.load_for_serve
    binds: list[str] = attrs.field(factory=list)
    app_state: AppState | None = None
    store: MinioStore | None = None
    _stop: trio.Event = attrs.field(factory=trio.Event)

    async def run(self, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED) -> None:
        """Run until :meth:`stop`. Start-up failures (``SchemaBehind``, ``DatabaseUnavailable``)
        are raised as themselves, not wrapped in the exception groups of the nurseries."""
        try:
            async with trio_asyncio.open_loop():
                await self._run_in_loop(task_status)
        except BaseExceptionGroup as group:
            leaf = sole_leaf(group)
            if leaf is None:
                raise
            raise leaf from None

    async def _run_in_loop(self, task_status: trio.TaskStatus[Daemon]) -> None:
        cfg = self.config
        async with open_database(
            cfg.database.url, cfg.database.pool_min, cfg.database.pool_max
        ) as db:
            await check_current(db)
            store = self.store = MinioStore(cfg.s3)
            try:
                await store.ensure_bucket()
            except StorageUnavailable as e:
                log.warning(
                    "object storage unavailable at start (requests needing it get 503): %s", e
                )
            self.app_state = AppState(config=cfg, db=db, store=store)
            async with trio.open_nursery() as root:
                system = ActorSystem(db, store, lambda: self.config)
                await root.start(system.run)
                self.app_state.actors = system
                _settle_garbage_collector()
                http_done = trio.Event()
                self.binds = await root.start(self._serve_http, http_done)
                interval = systemd.watchdog_interval()
                if interval is not None:
                    root.start_soon(systemd.watchdog_loop, interval)
                log.info("serving on %s", ", ".join(self.binds))
                system.ready()
                systemd.ready()
                task_status.started(self)
                await self._stop.wait()
                root.start_soon(system.quiesce)
                systemd.stopping()
                # WebSocket watchers hold their connections open: close them now (1001) or
                # Hypercorn waits out its grace period and they see 1006.
                system.hub.close_all()
                log.info(
                    "stopping: no new connections; in-flight requests get %ss", cfg.http.grace_sec
                )
                # First the HTTP front drains (in-flight requests still reach the actors), then
                # the actors stop; each one's committed state is what the next start rebuilds.
                with trio.move_on_after(cfg.http.grace_sec + 1):
                    await http_done.wait()
                with trio.move_on_after(STOP_ACTORS_SEC):
                    await system.drain()
                root.cancel_scope.cancel()
        log.info("stopped")

    async def _serve_http(
        self, done: trio.Event, *, task_status: trio.TaskStatus[list[str]]
    ) -> None:
        assert self.app_state is not None
        try:
            await hypercorn.trio.serve(
                create_app(self.app_state),
                self._hypercorn_config(),
                shutdown_trigger=self._stop.wait,
                task_status=task_status,
            )
        finally:
            done.set()

    def stop(self) -> None:
        # Before anything else: from this moment no node deadline fires (DESIGN §8).
        if self.app_state is not None:
            self.app_state.draining = True
            if self.app_state.actors is not None:
                self.app_state.actors.freeze()
        self._stop.set()

    async def stopping(self) -> None:
        """Returns once a stop was asked for (the daemon is then draining)."""
        await self._stop.wait()

    def reload(self) -> None:
        """Re-read the configuration with the checks start-up made; a configuration they refuse
        is logged (one line naming the key) and the running one kept whole."""
        systemd.reloading()
        try:
            new = self.loader(self.config_path)
        except ConfigError as e:
            log.error("reload refused, keeping the running configuration: %s", e)
            systemd.ready()
            return
        for section, key in RESTART_ONLY:
            if getattr(getattr(new, section), key) != getattr(getattr(self.config, section), key):
                log.warning("[%s] %s changed: takes effect after a restart", section, key)
        new = _keep_restart_only(new, self.config)
        self.config = new
        if self.store is not None:
            self.store.reconfigure(new.s3)
        if self.app_state is not None:
            self.app_state.reload(new)
        logs.set_level(new.log.level)
        logs.set_format(new.log.format)
        log.info("configuration reloaded")
        systemd.ready()

    def _hypercorn_config(self) -> hypercorn.config.Config:
        hc = hypercorn.config.Config()
        hc.bind = systemd.hypercorn_binds(
            self.listen_fds, self.config.http.host, self.config.http.port
        )
        # Bounds the in-flight requests only: an idle keep-alive connection is closed as soon as
        # shutdown_trigger returns (Hypercorn's TCPServer._idle_timeout waits on
        # context.terminated), so agents' pooled connections are not waited out
        # (tests/test_shutdown.py).
        hc.graceful_timeout = self.config.http.grace_sec
        # Server pings keep idle progress WebSockets alive through proxies that cut silence.
        hc.websocket_ping_interval = WS_PING_INTERVAL_SEC
        # Hypercorn re-listens on an inherited socket: keep the queue systemd set up.
        hc.backlog = 1024
        hc.accesslog = None
        hc.errorlog = logging.getLogger("hypercorn.error")
        return hc


def _settle_garbage_collector() -> None:
    """Thousands of long-lived actors make every full collection a ~200 ms pause (measured by
    bench/heartbeats): freeze what start-up built and collect the young generation less often."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 100)


def sole_leaf(group: BaseExceptionGroup[BaseException]) -> BaseException | None:
    """The one exception inside nested single-member groups, or None if there are several."""
    exc: BaseException = group
    while isinstance(exc, BaseExceptionGroup):
        if len(exc.exceptions) != 1:
            return None
        exc = exc.exceptions[0]
    return exc


def _keep_restart_only(new: Config, old: Config) -> Config:
    sections: dict[str, dict[str, object]] = {}
    for section, key in RESTART_ONLY:
        sections.setdefault(section, {})[key] = getattr(getattr(old, section), key)
    return attrs.evolve(
        new,
        **{
            section: attrs.evolve(getattr(new, section), **kept)
            for section, kept in sections.items()
        },
    )


async def handle_signals(daemon: Daemon) -> None:
    """SIGTERM/SIGINT stop the daemon gracefully; SIGHUP reloads its configuration."""
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as signals:
        async for signum in signals:
            if signum == signal.SIGHUP:
                log.info("SIGHUP: reloading configuration")
                daemon.reload()
            else:
                log.info("%s: shutting down", signal.Signals(signum).name)
                daemon.stop()
                return


async def serve_forever(
    daemon: Daemon, *, task_status: trio.TaskStatus[Daemon] = trio.TASK_STATUS_IGNORED
) -> None:
    """Run the daemon with signal handling until it stops; started once the daemon is ready."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(handle_signals, daemon)
        await daemon.run(task_status=task_status)
        nursery.cancel_scope.cancel()
