"""The SNAP tunnel gateway: serves tunnels and wires them to the data plane.

Start-up: state directory (certificate and dev signing key generated when
missing), persistent allocator, QUIC endpoint, underlay socket, HTTP
endpoint. Shutdown: stop accepting, close every tunnel with a close code and
reason, put every grant on hold, flush the store.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from snaptun.aio.quic import QuicConnection, QuicEndpoint, QuicSettings, fingerprint_of, listen
from snaptun.aio.server import Control, Sender, Server
from snaptun.constants import (
    INTERNAL_ERROR_REASON,
    KICKED_CLOSE_CODE,
    KICKED_REASON,
    REPLACED_CLOSE_CODE,
    REPLACED_REASON,
    CloseCode,
)
from snaptun.core.admission import AdmissionSettings
from snaptun.core.allocator import AddressManager, Grant, GrantState
from snaptun.core.state import STORE_UNAVAILABLE_REASON
from snaptun.core.tokens import ClaimsPolicy, JwtTokenValidator
from snaptun.errors import (
    AcceptError,
    AcceptInternalError,
    ControlError,
    SessionExpired,
    TunnelReplaced,
    UnexpectedControlRequest,
)
from snaptun.gateway.admin import (
    TunnelStatus,
    admin_url,
    iso_time,
    kick_action,
    page_route,
    remove_admin_files,
    tunnels_route,
    write_admin_file,
    write_secret,
)
from snaptun.gateway.bind import bound
from snaptun.gateway.config import GatewayConfig
from snaptun.gateway.dataplane import Dataplane, TunnelPort
from snaptun.gateway.events import EventLog
from snaptun.gateway.grant_writer import GrantWriter
from snaptun.gateway.http import HttpServer, metrics_route
from snaptun.gateway.metrics import GatewayMetrics
from snaptun.gateway.pg_store import Moved, PgGrantStore, PgGrantWriter
from snaptun.gateway.state_dir import (
    CONNECT_FILE,  # re-exported: its old home
    StateFiles,
    StateLock,
    check_tls_files,
    ensure_state,
    grant_store_error,
    load_token_keys,
    lock_state_dir,
)
from snaptun.gateway.store import GrantStoreError, PersistentAllocator
from snaptun.gateway.token_keys import POLL_INTERVAL, TokenKeys
from snaptun.netaddr import format_socket_address

__all__ = ["CONNECT_FILE", "SHUTDOWN_CLOSE_CODE", "Gateway", "StartReport", "connect_address"]

log = logging.getLogger(__name__)

SHUTDOWN_CLOSE_CODE: Final = 0
"""Application close code sent to every client when the gateway stops (QUIC NO_ERROR)."""
SHUTDOWN_REASON: Final = "gateway shutting down"
SWEEP_INTERVAL: Final = 60.0
"""Seconds between removals of ended holds from the grant store."""
FULL_CLOSE_CODE: Final = 5
"""InternalError: the gateway already serves ``max_tunnels`` tunnels."""


@dataclass
class _Live:
    """A tunnel the gateway is driving; what the admin endpoint shows of it."""

    sender: Sender[Any] | None
    """None until the setup finished."""
    task: asyncio.Task[None]
    remote: str = "?"
    """The client's address at accept; ``where()`` tells where it is now (roaming)."""
    where: Callable[[], str] | None = None
    identity: str = ""
    since: float = 0.0
    control: Control[Any] | None = None
    port: TunnelPort | None = None
    """The data plane's view (address and counters), once attached."""

    def status(self) -> TunnelStatus | None:
        """As the admin endpoint shows it; None before the tunnel is attached."""
        port, control = self.port, self.control
        if port is None or control is None:
            return None
        return TunnelStatus(
            pssid=self.identity,
            address=str(port.address),
            remote=self.where() if self.where is not None else self.remote,
            since=iso_time(self.since) or "",
            session_expiry=iso_time(control.machine.session_expiry),
            **_counters(port),
        )


def _counters(port: TunnelPort) -> dict[str, int]:
    """The per-tunnel accounting of the data plane, for the admin endpoint and the log."""
    return {
        "from_client_packets": port.from_client_packets,
        "from_client_bytes": port.from_client_bytes,
        "to_client_packets": port.to_client_packets,
        "to_client_bytes": port.to_client_bytes,
        "drops": port.drops,
        "scmp_sent": port.scmp_sent,
    }


@dataclass
class StartReport:
    """What start-up produced, for the operator."""

    state: StateFiles
    created: list[Path]
    listen: tuple[str, int]
    underlay: tuple[str, int]
    metrics: tuple[str, int] | None
    fingerprint: str
    admin: str | None
    cert: Path
    token_keys: list[Path] = field(default_factory=list)
    dev_key: bool = False
    """Whether tokens are checked against the state directory's dev key (no operator keys)."""


def connect_address(listen: tuple[str, int]) -> tuple[str, int]:
    """The address a client on this host dials: the listen address, loopback for a wildcard."""
    host, port = listen[0], listen[1]
    if host in ("0.0.0.0", ""):  # noqa: S104 - recognising the wildcard, not binding it
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return host, port


class Gateway:
    """``snaptun serve``: tunnels, data plane, persistence and observability."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        events: EventLog | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.events = events or EventLog()
        self._clock = clock
        self.metrics = GatewayMetrics()
        self._live: dict[int, _Live] = {}
        self._accepting: asyncio.Task[None] | None = None
        self._sweeping: asyncio.Task[None] | None = None
        self._watching: asyncio.Task[None] | None = None
        self.token_keys: TokenKeys
        """The token key files and the validator they feed (set by :meth:`start`)."""
        self.key_poll_interval = POLL_INTERVAL
        self._endpoint: QuicEndpoint | None = None
        self._http: HttpServer | None = None
        self._allocator: PersistentAllocator | None = None
        self._pg: PgGrantStore | None = None
        self._pg_writer: PgGrantWriter | None = None
        self._manager: AddressManager | None = None
        self._listening: asyncio.Task[None] | None = None
        self._dataplane: Dataplane | None = None
        self._lock: StateLock | None = None
        self._stopped = asyncio.Event()
        self._admin_root: Path | None = None

    # ---- start -----------------------------------------------------------------------------

    async def start(self) -> StartReport:  # noqa: PLR0915 - start-up, read top to bottom
        """Bring every part up; raises (and undoes nothing half-made) on a bad setting."""
        cfg = self.config
        # Before anything in the directory is read: one gateway per state directory.
        self._lock = lock_state_dir(cfg.state_dir)
        try:
            files, created = ensure_state(
                cfg.state_dir,
                certificate=cfg.cert is None,
                dev_key=not (cfg.token_keys or cfg.token_jwks),
            )
            cert = cfg.cert or files.cert
            key = cfg.key or files.key
            check_tls_files(Path(cert), Path(key), generated=cfg.cert is None)
            operator_keys = bool(cfg.token_keys or cfg.token_jwks)
            dev_paths = [] if operator_keys else [files.signing_public_key]
            key_paths = list(cfg.token_keys) or dev_paths
            policy = ClaimsPolicy(cfg.token_issuer, cfg.token_audience, cfg.token_leeway)
            if operator_keys:
                load_token_keys(key_paths, dev=None)  # PEM problems named with their remedy
                self.token_keys = TokenKeys.open(key_paths, cfg.token_jwks, policy)
            else:  # the dev key: checked against its private half (a clear error if damaged)
                dev_keys = load_token_keys(key_paths, dev=files)
                validator = JwtTokenValidator(dev_keys, policy=policy)
                self.token_keys = TokenKeys(validator, key_paths, ())
            manager = AddressManager(
                cfg.isd_as,
                cfg.pools,
                hold_time=cfg.hold,
                clock=self._clock,  # for the grant store's own calls (open, sweep, hold_all)
                rng=random.SystemRandom(),
                reserved=cfg.gateway_addresses,
            )
            writer: GrantWriter | PgGrantWriter
            if cfg.store == "sqlite":
                try:
                    self._allocator = PersistentAllocator.open(
                        manager, files.grants_db, now=self._clock()
                    )
                except GrantStoreError as exc:
                    raise grant_store_error(files.grants_db, exc) from exc
                writer = GrantWriter(self._allocator)
            else:
                writer = await self._open_shared_store(manager, files.root)
        except BaseException:
            self._lock.release()  # bad state: the directory is free again for a fixed start
            self._lock = None
            raise
        self.metrics.watch_free_addresses(
            manager.free_count, sorted({pool.version for pool in cfg.pools})
        )
        # Grants are written by the writer before they are answered (the core returns them).
        self._server: Server[Any] = Server(
            manager,
            self.token_keys.validator,
            self.metrics.library,
            clock=self._clock,
            store=writer,
        )
        if self._pg is not None:
            self._listening = asyncio.ensure_future(self._pg.listen(self._moved, self._missed))
        self._dataplane = Dataplane(
            self.metrics,
            gateway_addresses=cfg.gateway_addresses,
            next_hop=cfg.underlay_next_hop,
            # underlay_queue counts datagrams; the transport measures bytes
            underlay_queue_bytes=cfg.underlay_queue * cfg.mtu,
            scmp_rate=cfg.scmp_rate,
            scmp_burst=cfg.scmp_burst,
        )
        underlay = await bound(
            "underlay_bind", cfg.underlay_bind, self._dataplane.open_underlay(cfg.underlay_bind)
        )
        settings = QuicSettings(
            udp_payload_size=cfg.mtu, send_queue=cfg.tunnel_queue, socket_buffer=cfg.socket_buffer
        )
        admission = AdmissionSettings(
            max_half_open=cfg.max_half_open,
            source_rate=cfg.source_rate,
            source_burst=cfg.source_burst,
            retry=cfg.retry,  # type: ignore[arg-type]  # checked by GatewayConfig
        )
        self._endpoint = await bound(
            "listen",
            cfg.listen,
            listen(
                cfg.listen[0],
                cfg.listen[1],
                cert_file=cert,
                key_file=key,
                settings=settings,
                admission=admission,
                handshake_timeout=cfg.handshake_timeout,
            ),
        )
        endpoint = self._endpoint
        self.metrics.watch_admission(
            lambda: endpoint.gate.refused,
            lambda: endpoint.gate.half_open,
            lambda: endpoint.handshake_timeouts,
        )
        metrics_at, admin_at = await self._start_http(files.root)
        self._accepting = asyncio.ensure_future(self._accept_loop(self._endpoint))
        self._sweeping = asyncio.ensure_future(self._sweep_loop(writer))
        self._watching = asyncio.ensure_future(self._watch_keys())
        report = StartReport(
            state=files,
            created=created,
            listen=self._endpoint.local_address,
            underlay=underlay,
            metrics=metrics_at,
            fingerprint=fingerprint_of(Path(cert).read_bytes()),  # noqa: ASYNC240 - start-up only
            admin=admin_at,
            cert=Path(cert),
            token_keys=[*key_paths, *cfg.token_jwks],
            dev_key=not operator_keys,
        )
        _write_connect_file(files.connect_info, report)
        self.events.emit(
            "started",
            listen=_fmt(report.listen),
            underlay=_fmt(underlay),
            next_hop=_fmt(cfg.underlay_next_hop),
            metrics=_fmt(metrics_at) if metrics_at else None,
            admin=admin_at,
            fingerprint=report.fingerprint,
            state_dir=str(files.root),
        )
        return report

    async def _start_http(self, root: Path) -> tuple[tuple[str, int] | None, str | None]:
        """Serve /metrics, /healthz and the admin endpoint; write where in ``root``.

        Returns the bound address and the admin URL (None, None: ``metrics`` is off).
        """
        where = self.config.metrics
        if where is None:
            return None, None
        secret = write_secret(root)  # fresh, before serving
        self._http = await bound(
            "metrics",
            where,
            HttpServer.start(
                where[0],
                where[1],
                {
                    "/metrics": metrics_route(self.metrics.registry),
                    "/healthz": self._health,
                    "/admin/tunnels": tunnels_route(self.tunnels),
                    "/": page_route(),
                },
                actions={"/admin/kick": kick_action(self.kick, secret)},
            ),
        )
        self._admin_root = root
        metrics_at = self._http.address
        admin_at = admin_url(*metrics_at)
        write_admin_file(root, admin_at)
        return metrics_at, admin_at

    async def _close_http(self) -> None:
        if self._http is not None:
            await self._http.close()
        if self._admin_root is not None:
            remove_admin_files(self._admin_root)

    async def _sweep_loop(self, writer: GrantWriter | PgGrantWriter) -> None:
        """Delete ended holds from the store now and then (the allocator frees them lazily)."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL)
            if isinstance(writer, PgGrantWriter):
                try:
                    await writer.sweep()
                except GrantStoreError as exc:
                    log.warning("grant store sweep failed: %s", exc)
            else:
                writer.sweep()

    # ---- shared grant store ------------------------------------------------------------------

    async def _open_shared_store(self, manager: AddressManager, root: Path) -> PgGrantWriter:
        """Connect to the fleet's store and take this gateway's partition over.

        Every row whose address lies in this gateway's pools becomes a hold
        (an active one until now + hold: its tunnel is gone) and this
        gateway's, so its identity gets the address back here and nobody
        else does; a gateway that still named it is told (and closes its
        tunnel, as it would for any newer grant).
        """
        cfg = self.config
        name = cfg.gateway_id or f"{socket.gethostname()}:{root}"
        pg = await PgGrantStore.open(
            cfg.store, name, pool_size=cfg.store_pool, timeout=cfg.store_timeout
        )
        try:
            now = self._clock()
            kept = []
            for stored in await pg.load(cfg.pools):
                grant = stored
                if stored.state is GrantState.ACTIVE:
                    grant = Grant(stored.identity, stored.address, GrantState.HELD, now + cfg.hold)
                elif stored.hold_until is not None and stored.hold_until < now:
                    continue
                if manager.is_usable(grant.address):
                    kept.append(grant)
            manager.restore(kept)
            await pg.restart(kept)
        except BaseException:
            await pg.close()
            raise
        self._pg = pg
        self._pg_writer = PgGrantWriter(
            pg,
            manager,
            self._clock,
            timeout=cfg.store_timeout,
            on_unavailable=self.metrics.store_unavailable.inc,
        )
        self._manager = manager
        return self._pg_writer

    def _moved(self, moved: Moved) -> None:
        """Another gateway took a grant of ours: close the local tunnel, as newest wins."""
        if self._pg_writer is not None and self._pg_writer.moved(moved):
            self._server.registry.evict(moved.identity)
            self.events.emit("moved", identity=moved.identity, gateway=moved.new)

    async def _missed(self) -> None:
        """After the listener (re)connected: the moves it may have missed."""
        if self._pg_writer is not None:
            for moved in await self._pg_writer.missed():
                self._moved(moved)

    async def _watch_keys(self) -> None:
        """Reload the token keys when one of their files changes."""
        while True:
            await asyncio.sleep(self.key_poll_interval)
            if self.token_keys.changed():
                self.reload_token_keys("file changed")

    def reload_token_keys(self, why: str = "SIGHUP") -> bool:
        """Re-read the token key files now; a bad file keeps the old keys (logged once)."""
        ok = self.token_keys.reload(why)
        self.metrics.key_reloads.labels("ok" if ok else "failed").inc()
        keys = self.token_keys.validator.key_set
        if ok:
            self.events.emit("keys_reloaded", why=why, keys=len(keys), kids=",".join(keys.kids))
        return ok

    def _health(self) -> tuple[int, str, bytes]:
        ok = self._accepting is not None and not self._accepting.done()
        body = b'{"status":"ok","tunnels":%d}\n' % len(self._live) if ok else b'{"status":"down"}\n'
        return (200 if ok else 503), "application/json", body

    # ---- admin ----------------------------------------------------------------------------

    def tunnels(self) -> list[TunnelStatus]:
        """The live tunnels (set up and attached), oldest first."""
        found = (live.status() for live in self._live.values())
        return sorted((s for s in found if s is not None), key=lambda s: s.since)

    def kick(self, selector: str) -> list[TunnelStatus]:
        """Close every live tunnel whose address, IP or pssid is ``selector``; what was closed.

        Code 0, reason ``closed by the operator``: a client reconnects after its
        backoff (a kick is no ban; refusing a client takes its token).
        """
        wanted = selector.strip().lower()
        kicked = []
        for live in list(self._live.values()):
            status = live.status()
            if status is None or live.sender is None or live.port is None:
                continue
            names = {status.pssid.lower(), status.address.lower(), str(live.port.address.ip)}
            if wanted not in names:
                continue
            live.sender.close(KICKED_CLOSE_CODE, KICKED_REASON)
            self.metrics.kicked.inc()
            self.metrics.closes.labels(str(KICKED_CLOSE_CODE)).inc()
            self.events.emit(
                "kicked",
                remote=status.remote,
                identity=status.pssid,
                address=status.address,
                reason=KICKED_REASON,
                code=KICKED_CLOSE_CODE,
            )
            kicked.append(status)
        return kicked

    # ---- tunnels ---------------------------------------------------------------------------

    async def _accept_loop(self, endpoint: QuicEndpoint) -> None:
        while True:
            conn = await endpoint.accept()
            remote = _fmt(conn.remote_address) if conn.remote_address else "?"
            if len(self._live) >= self.config.max_tunnels:
                conn.close(FULL_CLOSE_CODE, "gateway is full")
                self.metrics.setups.labels("refused", "max_tunnels").inc()
                self.metrics.closes.labels(str(FULL_CLOSE_CODE)).inc()
                self.events.emit("refused", remote=remote, reason="gateway is full")
                continue
            task = asyncio.ensure_future(self._serve(conn, remote))
            task.add_done_callback(self._forget)
            self._live[id(task)] = _Live(None, task, remote)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._live.pop(id(task), None)

    async def _serve(self, conn: QuicConnection, remote: str) -> None:
        """Serve one tunnel; a defect of ours closes it with code 5, logged once."""
        me = self._live.get(id(asyncio.current_task()))
        try:
            await self._serve_tunnel(conn, remote, me)
        except Exception:
            log.exception("unexpected error serving the tunnel from %s; closing it", remote)
            self.metrics.internal_errors.inc()
            if conn.closed is None:
                if me is not None and me.sender is not None:
                    me.sender.close(CloseCode.INTERNAL_ERROR, INTERNAL_ERROR_REASON)
                else:
                    conn.close(CloseCode.INTERNAL_ERROR, INTERNAL_ERROR_REASON)
                self.metrics.closes.labels(str(CloseCode.INTERNAL_ERROR.value)).inc()

    async def _serve_tunnel(self, conn: QuicConnection, remote: str, me: _Live | None) -> None:
        assert self._dataplane is not None
        conn.on_receive_drop = lambda: self.metrics.drop("tunnel_receive_queue_full")
        try:
            sender, receiver, control = await self._server.accept_with_timeout(conn)
        except AcceptError as exc:
            self._refused(conn, remote, exc)
            return
        if me is not None:
            me.sender = sender
        identity = control.machine.identity()
        address = sender.assigned_addresses[0]

        def here() -> str:
            """The client's address now: a roaming client's changes (NAT rebinding)."""
            return _fmt(conn.remote_address) if conn.remote_address else remote

        self.metrics.setups.labels("accepted", "").inc()
        self.metrics.active_tunnels.inc()
        self.events.emit("accepted", remote=here(), identity=identity, address=str(address))
        # From here the tunnel's packets reach the data plane through the receiver's sink.
        port = self._dataplane.attach(sender, control, receiver)
        if me is not None:
            me.identity, me.since, me.where = identity or "", self._clock(), here
            me.control, me.port = control, port
        # Newest wins: the route goes the moment a newer tunnel takes the grant over.
        control.machine.on_replaced(lambda: self._dataplane_detach(port))
        state: dict[str, Any] = {"address": address}

        def changed() -> None:
            machine = control.machine
            current = machine.addresses()[0] if machine.allocation else address
            if current != state["address"]:
                state["address"] = current
                self.events.emit("assigned", remote=here(), identity=identity, address=str(current))
            else:
                self.events.emit(
                    "renewed", remote=here(), identity=identity, valid_until=machine.session_expiry
                )

        control.on_change(changed)
        try:
            await self._drive(
                conn,
                control,
                lambda: {
                    "remote": here(),
                    "identity": identity,
                    "address": str(state["address"]),
                    **_counters(port),
                },
            )
        finally:
            self._dataplane.release(port)
            self.metrics.active_tunnels.dec()

    async def _drive(
        self, conn: QuicConnection, control: Control[Any], where: Callable[[], dict[str, Any]]
    ) -> None:
        """Run the tunnel's Control until it ends; count and log how it ended."""
        try:
            await control.run()
            lost = conn.closed
            reason = "client closed" if lost is None or lost.by_peer else lost.reason
            self.events.emit("closed", **where(), reason=reason)
        except TunnelReplaced:
            self.metrics.replaced.inc()
            self.metrics.closes.labels(str(REPLACED_CLOSE_CODE)).inc()
            self.events.emit(
                "replaced", **where(), reason=REPLACED_REASON, code=REPLACED_CLOSE_CODE
            )
        except SessionExpired:
            self.metrics.closes.labels("4").inc()
            self.events.emit("expired", **where(), code=4)
        except ControlError as exc:
            code = conn.closed.code if conn.closed is not None else None
            if conn.closed is not None and not conn.closed.by_peer:
                self.metrics.closes.labels(str(code)).inc()
            self.events.emit("closed", **where(), reason=str(exc), code=code)

    def _dataplane_detach(self, port: TunnelPort) -> None:
        if self._dataplane is not None:
            self._dataplane.detach(port)

    def _refused(self, conn: QuicConnection, remote: str, exc: AcceptError) -> None:
        lost = conn.closed
        code = lost.code if lost is not None and not lost.by_peer else None
        reason = type(exc).__name__
        cause = getattr(exc, "cause", None)
        if cause is not None:
            reason = f"{reason}:{type(cause).__name__}"
        elif isinstance(exc, UnexpectedControlRequest) and exc.refusal is not None:
            reason = f"{reason}:{exc.refusal}"  # e.g. UnexpectedControlRequest:TokenExpired
        if lost is not None and lost.reason == STORE_UNAVAILABLE_REASON:
            reason = "store_unavailable"
        self.metrics.setups.labels("refused", reason).inc()
        if isinstance(exc, AcceptInternalError):
            self.metrics.internal_errors.inc()
        if code is not None:
            self.metrics.closes.labels(str(code)).inc()
        self.events.emit("refused", remote=remote, reason=str(exc), code=code)

    # ---- stop --------------------------------------------------------------------------------

    async def wait_stopped(self) -> None:
        """Return once :meth:`shutdown` finished."""
        await self._stopped.wait()

    async def shutdown(self, timeout: float = 3.0) -> None:
        """Stop accepting, close every tunnel, hold every grant, flush the store."""
        self.events.emit("stopping", tunnels=len(self._live))
        if self._accepting is not None:
            self._accepting.cancel()  # no new tunnels from here on
        if self._sweeping is not None:
            self._sweeping.cancel()
        if self._watching is not None:
            self._watching.cancel()
        tasks = []
        for live in list(self._live.values()):
            if live.sender is not None:
                live.sender.close(SHUTDOWN_CLOSE_CODE, SHUTDOWN_REASON)
                self.metrics.closes.labels(str(SHUTDOWN_CLOSE_CODE)).inc()
            else:
                live.task.cancel()
            tasks.append(live.task)
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        if self._endpoint is not None:
            # Only now: qh3 closes every remaining connection without a reason.
            self._endpoint.close()
        if self._allocator is not None:
            self._allocator.hold_all()
            self._allocator.close()
        await self._close_shared_store()
        if self._dataplane is not None:
            self._dataplane.close()
        await self._close_http()
        if self._lock is not None:
            self._lock.release()  # last: the store is flushed and closed
        self.events.emit("stopped")
        self._stopped.set()

    async def _close_shared_store(self) -> None:
        """Shutdown on a shared store: the last holds written, this gateway's rows held."""
        if self._listening is not None:
            self._listening.cancel()
        if self._pg is None or self._pg_writer is None:
            return
        await self._pg_writer.drain()
        try:
            await self._pg.hold_all(self._clock() + self.config.hold)
        except GrantStoreError as exc:
            log.warning("holds not stored at shutdown (they start at the next start): %s", exc)
        await self._pg.close()


def _fmt(address: tuple[str, int] | None) -> str:
    if address is None:
        return "-"
    host, port = address[0], address[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _write_connect_file(path: Path, report: StartReport) -> None:
    """Where and how to reach this gateway (address, fingerprint, dev key), replaced atomically.

    A failure is logged, not fatal: the file is a convenience for ``token issue --connect``.
    """
    host, port = connect_address(report.listen)
    record = {
        "address": format_socket_address(host, port),
        "fingerprint": report.fingerprint,
        "dev_key": report.dev_key,
    }
    temporary = path.with_suffix(".tmp")
    try:
        temporary.write_text(json.dumps(record) + "\n")
        os.replace(temporary, path)
    except OSError as exc:
        log.warning("cannot write %s: %s", path, exc)
