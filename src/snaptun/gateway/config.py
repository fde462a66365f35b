"""Configuration of ``snaptun serve``: flags over environment over TOML file over defaults.

Every setting has one name in each source::

    field / TOML key     flag                   environment variable
    listen               --listen ADDR          SNAPTUN_LISTEN
    pools                --pool PREFIX (rep.)   SNAPTUN_POOL="10.0.0.0/24,fd00::/64"
    ...

The TOML file is named by ``--config`` or ``SNAPTUN_CONFIG``. The first source
that gives a setting wins; lists are replaced, never merged. Every problem is a
:class:`ConfigError` that names the setting and where its value came from.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import math
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal, cast

import tomli_w

from snaptun.core.addressing import IPAddress, IPNetwork, IsdAs
from snaptun.errors import SnaptunError
from snaptun.gateway.state_dir import default_state_dir
from snaptun.netaddr import format_socket_address, parse_socket_address

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_ISD_AS",
    "LOG_LEVELS",
    "ConfigError",
    "GatewayConfig",
    "add_serve_arguments",
    "render_toml",
    "resolve_config",
]

LOG_LEVELS: Final = ("debug", "info", "warning", "error")
_ENV_PREFIX: Final = "SNAPTUN_"
CONFIG_ENV: Final = "SNAPTUN_CONFIG"
DEFAULT_ISD_AS: Final = IsdAs(1, 0xFF00_0000_0110)  # 1-ff00:0:110

Source = Literal["flag", "env", "file", "default", "argument"]


class ConfigError(ValueError, SnaptunError):
    """A setting of ``snaptun serve`` is invalid.

    ``key`` is the setting (the TOML key, e.g. ``pools``), ``source`` where the
    bad value came from (``flag``, ``env``, ``file``, ``default``, or
    ``argument`` when :class:`GatewayConfig` is built directly) and ``origin``
    the exact place (``--pool``, ``SNAPTUN_POOL``, the file's path).
    """

    def __init__(self, key: str, problem: str, source: Source, origin: str) -> None:
        self.key = key
        self.problem = problem
        self.source: Source = source
        self.origin = origin
        where = source if origin == source else f"{_SOURCE_NAMES[source]} {origin}"
        super().__init__(f"{key}: {problem} (from {where})")


_SOURCE_NAMES: Final[Mapping[Source, str]] = {
    "flag": "flag",
    "env": "environment variable",
    "file": "file",
    "default": "default",
    "argument": "argument",
}


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    """The effective configuration of one gateway; validated on construction."""

    listen: tuple[str, int] = ("127.0.0.1", 4433)
    cert: Path | None = None  # None: generated in the state directory
    key: Path | None = None
    token_keys: tuple[Path, ...] = ()  # Ed25519 public PEMs; empty: the state dir's dev key
    token_jwks: tuple[Path, ...] = ()  # JWK Sets of Ed25519 keys (kid), reloaded on change
    token_issuer: str | None = None  # iss a token must carry; None: not checked
    token_audience: str | None = None  # aud a token must name; None: not another's ("snap")
    token_leeway: float = 60.0  # seconds a token is accepted before its nbf
    isd_as: IsdAs = DEFAULT_ISD_AS
    pools: tuple[IPNetwork, ...] = (
        ipaddress.IPv4Network("10.0.0.0/24"),
        ipaddress.IPv6Network("fd00::/64"),
    )
    # The gateway's own SCION host addresses (source of SCMP), reserved from the pools.
    gateway_addresses: tuple[IPAddress, ...] = (
        ipaddress.IPv4Address("10.0.0.1"),
        ipaddress.IPv6Address("fd00::1"),
    )
    hold: float = 600.0
    metrics: tuple[str, int] | None = ("127.0.0.1", 9464)  # None: no HTTP endpoint
    underlay_bind: tuple[str, int] = ("127.0.0.1", 30041)
    underlay_next_hop: tuple[str, int] = ("127.0.0.1", 30042)  # the SCION border router
    max_tunnels: int = 1024
    state_dir: Path = field(default_factory=default_state_dir)
    mtu: int = 1452
    tunnel_queue: int = 1024  # datagrams per tunnel towards the client
    underlay_queue: int = 4096  # datagrams towards the underlay socket
    socket_buffer: int = 4 * 1024 * 1024  # kernel buffer of the QUIC socket, bytes
    max_half_open: int = 256  # QUIC connections in their handshake at once
    source_rate: float = 20.0  # new connections per second per source address (IPv6: /64)
    source_burst: int = 50  # new connections a source may open at once
    handshake_timeout: float = 5.0  # seconds a QUIC handshake may take
    retry: str = "auto"  # QUIC Retry: auto (near the half-open bound), always, never
    scmp_rate: float = 10.0  # SCMP answers (errors, echo replies) per second per tunnel
    scmp_burst: int = 20  # SCMP answers a tunnel may get at once
    log_level: str = "info"
    # Grant store: "sqlite" (the state directory's file) or a postgresql:// URL shared by a fleet.
    store: str = "sqlite"
    gateway_id: str = ""  # this gateway's name in a shared store; "": host name and state_dir
    store_pool: int = 4  # connections to a shared store (plus one that listens)
    store_timeout: float = 1.0  # seconds a grant write may take on a shared store

    def __post_init__(self) -> None:
        problem = _check(self)
        if problem is not None:
            key, text = problem
            raise ConfigError(key, text, "argument", "argument")


def _check(config: GatewayConfig) -> tuple[str, str] | None:
    """The first (key, problem) of ``config``, or None when it is consistent."""
    return next(_problems(config), None)


def _problems(config: GatewayConfig) -> Iterator[tuple[str, str]]:
    if config.cert is not None and config.key is None:
        yield "cert", "given without key"
    if config.key is not None and config.cert is None:
        yield "key", "given without cert"
    if config.isd_as.is_wildcard:
        yield "isd_as", f"{config.isd_as} is a wildcard"
    if not math.isfinite(config.token_leeway) or not 0 <= config.token_leeway <= 3600:
        yield "token_leeway", f"{config.token_leeway} is not a number of seconds in 0..3600"
    if not math.isfinite(config.hold) or config.hold < 0:
        yield "hold", f"{config.hold} is not a number of seconds >= 0"
    for key, value, low, high in (
        ("max_tunnels", config.max_tunnels, 1, 1 << 24),
        ("mtu", config.mtu, 1200, 65527),
        ("tunnel_queue", config.tunnel_queue, 1, 1 << 20),
        ("underlay_queue", config.underlay_queue, 1, 1 << 20),
        ("socket_buffer", config.socket_buffer, 0, 1 << 30),
        ("scmp_burst", config.scmp_burst, 1, 1 << 20),
        ("max_half_open", config.max_half_open, 1, 1 << 20),
        ("source_burst", config.source_burst, 1, 1 << 20),
    ):
        if not low <= value <= high:
            yield key, f"{value} is outside {low}..{high}"
    if not math.isfinite(config.source_rate) or config.source_rate < 0:
        yield "source_rate", f"{config.source_rate} is not a number of connections per second >= 0"
    if not math.isfinite(config.handshake_timeout) or config.handshake_timeout <= 0:
        yield "handshake_timeout", f"{config.handshake_timeout} is not a number of seconds > 0"
    if config.retry not in ("auto", "always", "never"):
        yield "retry", f"{config.retry!r} is not auto, always or never"
    if not math.isfinite(config.scmp_rate) or config.scmp_rate < 0:
        yield "scmp_rate", f"{config.scmp_rate} is not a number of answers per second >= 0"
    yield from _store_problems(config)
    if config.log_level not in LOG_LEVELS:
        yield "log_level", f"{config.log_level!r} is not one of {', '.join(LOG_LEVELS)}"
    yield from _pool_problems(config.pools, config.gateway_addresses)


def _store_problems(config: GatewayConfig) -> Iterator[tuple[str, str]]:
    if config.store != "sqlite" and not config.store.startswith(("postgresql://", "postgres://")):
        yield "store", f"{config.store!r} is not sqlite or a postgresql:// URL"
    if not 1 <= config.store_pool <= 1000:
        yield "store_pool", f"{config.store_pool} is outside 1..1000"
    # Below the setup's own 3 s (ACCEPT_TIMEOUT), so a refusal is answered in time.
    if not math.isfinite(config.store_timeout) or not 0 < config.store_timeout < 3:
        yield "store_timeout", f"{config.store_timeout} is not a number of seconds in (0, 3)"


def _pool_problems(
    pools: tuple[IPNetwork, ...], gateway: tuple[IPAddress, ...]
) -> Iterator[tuple[str, str]]:
    if not pools:
        yield "pools", "at least one pool is needed"
    for i, pool in enumerate(pools):
        for other in pools[:i]:
            if pool.version == other.version and pool.overlaps(other):
                yield "pools", f"{pool} overlaps {other}"
    if len(set(gateway)) != len(gateway):
        yield "gateway_addresses", "an address is listed twice"
    for address in gateway:
        if not any(address in pool for pool in pools):
            listed = ", ".join(str(p) for p in pools)
            yield "gateway_addresses", f"{address} is outside every pool ({listed})"
    for pool in pools:
        if not any(address.version == pool.version for address in gateway):
            yield "gateway_addresses", f"none is an IPv{pool.version} address for pool {pool}"
        if pool.num_addresses <= sum(address in pool for address in gateway):
            yield "pools", f"{pool} has no address left besides the gateway's"


# ---------------------------------------------------------------------------
# Parsing one value


def _text(value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"expected a string, got {type(value).__name__} {value!r}")
    if not value.strip():
        raise ValueError("empty value")
    return value.strip()


def _address(value: object, base: Path) -> tuple[str, int]:
    return parse_socket_address(_text(value))


def _metrics(value: object, base: Path) -> tuple[str, int] | None:
    text = _text(value)
    return None if text.lower() == "off" else parse_socket_address(text)


def _path(value: object, base: Path) -> Path:
    path = Path(_text(value)).expanduser()
    return path if path.is_absolute() else base / path


def _isd_as(value: object, base: Path) -> IsdAs:
    return IsdAs.parse(_text(value))


def _network(value: object, base: Path) -> IPNetwork:
    return ipaddress.ip_network(_text(value), strict=True)


def _ip(value: object, base: Path) -> IPAddress:
    return ipaddress.ip_address(_text(value))


def _float(value: object, base: Path) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise TypeError(f"expected a number, got {type(value).__name__} {value!r}")
    number = float(value)
    if not math.isfinite(number):
        raise ValueError(f"{value!r} is not finite")
    return number


def _int(value: object, base: Path) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise TypeError(f"expected an integer, got {type(value).__name__} {value!r}")
    return int(value)


def _word(value: object, base: Path) -> str:
    return _text(value)


def _lowercase_word(value: object, base: Path) -> str:
    return _text(value).lower()


@dataclass(frozen=True, slots=True)
class _Option:
    key: str  # GatewayConfig field and TOML key
    flag: str
    metavar: str
    help: str
    parse: Callable[[object, Path], object]
    many: bool = False

    @property
    def dest(self) -> str:
        return self.flag[2:].replace("-", "_")

    @property
    def env(self) -> str:
        return _ENV_PREFIX + self.flag[2:].upper().replace("-", "_")


_OPTIONS: Final = (
    _Option("listen", "--listen", "ADDR", "QUIC listen address (127.0.0.1:4433)", _address),
    _Option("cert", "--cert", "PEM", "TLS certificate chain (default: generated)", _path),
    _Option("key", "--key", "PEM", "its private key (with --cert)", _path),
    _Option(
        "token_keys",
        "--token-key",
        "PUBLIC_PEM",
        "Ed25519 public key of a token issuer (repeatable; default: the state dir's dev key)",
        _path,
        many=True,
    ),
    _Option(
        "token_jwks",
        "--token-jwks",
        "FILE",
        "JWK Set of Ed25519 token keys, selected by kid; re-read on SIGHUP and on change "
        "(repeatable; combinable with --token-key)",
        _path,
        many=True,
    ),
    _Option(
        "token_issuer", "--token-issuer", "ISS", "iss a token must carry (default: any)", _word
    ),
    _Option(
        "token_audience",
        "--token-audience",
        "AUD",
        "aud a token must name (default: a token's aud, if any, must name 'snap')",
        _word,
    ),
    _Option(
        "token_leeway",
        "--token-leeway",
        "SECS",
        "accept a token this long before its nbf, for clock skew (60)",
        _float,
    ),
    _Option("isd_as", "--isd-as", "IA", "ISD-AS of assigned addresses (1-ff00:0:110)", _isd_as),
    _Option(
        "pools",
        "--pool",
        "PREFIX",
        "address pool (repeatable; default 10.0.0.0/24 and fd00::/64)",
        _network,
        many=True,
    ),
    _Option(
        "gateway_addresses",
        "--gateway-address",
        "IP",
        "the gateway's own address in a pool, source of SCMP (repeatable; "
        "default: the first host address of each pool)",
        _ip,
        many=True,
    ),
    _Option("hold", "--hold", "SECS", "keep a released address for its holder (600)", _float),
    _Option("metrics", "--metrics", "ADDR|off", "/metrics and /healthz (127.0.0.1:9464)", _metrics),
    _Option(
        "underlay_bind",
        "--underlay-bind",
        "ADDR",
        "underlay UDP socket (127.0.0.1:30041)",
        _address,
    ),
    _Option(
        "underlay_next_hop",
        "--underlay-next-hop",
        "ADDR",
        "the SCION border router (127.0.0.1:30042)",
        _address,
    ),
    _Option("max_tunnels", "--max-tunnels", "N", "concurrent tunnels (1024)", _int),
    _Option(
        "state_dir",
        "--state-dir",
        "DIR",
        "certificate, keys, grants ($XDG_STATE_HOME/snaptun)",
        _path,
    ),
    _Option("mtu", "--mtu", "BYTES", "UDP payload size of QUIC packets (1452)", _int),
    _Option("tunnel_queue", "--tunnel-queue", "N", "datagrams queued per tunnel (1024)", _int),
    _Option(
        "underlay_queue", "--underlay-queue", "N", "datagrams queued to the underlay (4096)", _int
    ),
    _Option(
        "max_half_open", "--max-half-open", "N", "QUIC handshakes in progress at once (256)", _int
    ),
    _Option(
        "source_rate",
        "--source-rate",
        "N",
        "new connections per second per source address or IPv6 /64 (20)",
        _float,
    ),
    _Option("source_burst", "--source-burst", "N", "new connections at once per source (50)", _int),
    _Option(
        "handshake_timeout",
        "--handshake-timeout",
        "SECS",
        "a QUIC handshake not done by then is dropped (5)",
        _float,
    ),
    _Option(
        "scmp_rate",
        "--scmp-rate",
        "N",
        "SCMP answers (errors, echo replies) per second per tunnel (10)",
        _float,
    ),
    _Option("scmp_burst", "--scmp-burst", "N", "SCMP answers at once per tunnel (20)", _int),
    _Option(
        "socket_buffer",
        "--socket-buffer",
        "BYTES",
        "kernel receive/send buffer of the QUIC socket; 0: the system's (4194304)",
        _int,
    ),
    _Option(
        "retry",
        "--retry",
        "MODE",
        "QUIC Retry: auto (near the half-open bound) | always | never (auto)",
        _lowercase_word,
    ),
    _Option("log_level", "--log-level", "LEVEL", f"{'|'.join(LOG_LEVELS)} (info)", _lowercase_word),
    _Option(
        "store",
        "--store",
        "sqlite|URL",
        "grant store: the state dir's SQLite file, or postgresql://... shared by a fleet (sqlite)",
        lambda value, base: _text(value),
    ),
    _Option(
        "gateway_id",
        "--gateway-id",
        "NAME",
        "this gateway's unique, stable name in a shared store (host name:state_dir)",
        lambda value, base: value.strip() if isinstance(value, str) else _text(value),
    ),
    _Option("store_pool", "--store-pool", "N", "connections to a shared grant store (4)", _int),
    _Option(
        "store_timeout",
        "--store-timeout",
        "SECS",
        "a grant write to a shared store not done by then refuses the setup (1)",
        _float,
    ),
)
_KEYS: Final = frozenset(option.key for option in _OPTIONS)


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the flags of ``snaptun serve``; every default is None ("not given")."""
    parser.add_argument(
        "--config", metavar="FILE", default=None, help=f"TOML configuration file (${CONFIG_ENV})"
    )
    parser.add_argument(
        "--print-config",
        action="store_true",
        default=None,
        help="print the effective configuration as TOML and exit",
    )
    for option in _OPTIONS:
        parser.add_argument(
            option.flag,
            dest=option.dest,
            metavar=option.metavar,
            default=None,
            action="append" if option.many else "store",
            help=f"{option.help} [${option.env}]",
        )


# ---------------------------------------------------------------------------
# Resolving


@dataclass(frozen=True, slots=True)
class _Given:
    raw: object
    source: Source
    origin: str
    base: Path  # relative paths are relative to this


def _load_file(path: Path, source: Source, origin: str) -> dict[str, Any]:
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except OSError as exc:
        raise ConfigError("config", f"cannot read {path}: {exc.strerror}", source, origin) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError("config", f"{path} is not valid TOML: {exc}", source, origin) from None


@dataclass(frozen=True, slots=True)
class _Sources:
    args: argparse.Namespace
    environ: Mapping[str, str]
    file: Mapping[str, Any]
    file_path: Path | None
    cwd: Path

    def given(self, option: _Option) -> _Given | None:
        """The value of ``option`` from the first source that has one."""
        flag_value = getattr(self.args, option.dest, None)
        if flag_value is not None:
            return _Given(flag_value, "flag", option.flag, self.cwd)
        env_value = self.environ.get(option.env, "")
        if env_value.strip():
            raw: object = env_value
            if option.many:
                raw = [item.strip() for item in env_value.split(",") if item.strip()]
            return _Given(raw, "env", option.env, self.cwd)
        if option.key in self.file and self.file_path is not None:
            path = self.file_path
            return _Given(self.file[option.key], "file", str(path), path.parent)
        return None


def _items(raw: object) -> list[object]:
    if not isinstance(raw, list):
        raise TypeError(f"expected a list, got {type(raw).__name__} {raw!r}")
    return raw


def _convert(option: _Option, given: _Given) -> object:
    try:
        if given.source == "file" and option.parse in (_int, _float) and isinstance(given.raw, str):
            raise TypeError(f"expected a TOML number, got string {given.raw!r}")  # noqa: TRY301
        if not option.many:
            return option.parse(given.raw, given.base)
        return tuple(option.parse(item, given.base) for item in _items(given.raw))
    except (TypeError, ValueError) as exc:
        raise ConfigError(option.key, str(exc), given.source, given.origin) from None


def resolve_config(args: argparse.Namespace, environ: Mapping[str, str]) -> GatewayConfig:
    """The effective configuration: flags > ``SNAPTUN_*`` environment > TOML file > defaults.

    Relative paths are taken relative to the working directory, or to the
    file's folder for paths written in the file. Without a state directory,
    ``$XDG_STATE_HOME/snaptun`` of ``environ`` (else ``~/.local/state/snaptun``);
    without gateway addresses, the first host address of each pool.
    """
    cwd = Path.cwd()
    file: dict[str, Any] = {}
    file_path: Path | None = None
    config_flag = getattr(args, "config", None)
    config_env = environ.get(CONFIG_ENV, "").strip()
    if config_flag is not None or config_env:
        source: Source = "flag" if config_flag is not None else "env"
        origin = "--config" if config_flag is not None else CONFIG_ENV
        try:
            file_path = _path(config_flag if config_flag is not None else config_env, cwd)
        except (TypeError, ValueError) as exc:
            raise ConfigError("config", str(exc), source, origin) from None
        file = _load_file(file_path, source, origin)
        for key in file:
            if key not in _KEYS:
                raise ConfigError(key, "unknown setting", "file", str(file_path))

    values: dict[str, object] = {}
    chosen: dict[str, _Given] = {}
    sources = _Sources(args, environ, file, file_path, cwd)
    for option in _OPTIONS:
        given = sources.given(option)
        if given is not None:
            values[option.key] = _convert(option, given)
            chosen[option.key] = given
    if "state_dir" not in values:
        xdg = environ.get("XDG_STATE_HOME", "").strip()
        values["state_dir"] = (
            Path(xdg) / "snaptun" if xdg else Path.home() / ".local" / "state" / "snaptun"
        )
    if "gateway_addresses" not in values and "pools" in values:
        pools: tuple[IPNetwork, ...] = values["pools"]  # type: ignore[assignment]
        values["gateway_addresses"] = tuple(next(iter(pool.hosts())) for pool in pools)
    try:
        return GatewayConfig(**values)  # type: ignore[arg-type]
    except ConfigError as exc:
        given = chosen.get(exc.key)
        if given is None:
            raise ConfigError(exc.key, exc.problem, "default", "default") from None
        raise ConfigError(exc.key, exc.problem, given.source, given.origin) from None


def render_toml(config: GatewayConfig) -> str:
    """The configuration as a TOML file that :func:`resolve_config` reads back unchanged."""
    document: dict[str, Any] = {}
    for item in dataclasses.fields(config):
        value = getattr(config, item.name)
        if value is None and item.name in ("cert", "key", "token_issuer", "token_audience"):
            continue  # TOML has no null: absent means "generated" or "not checked"
        document[item.name] = _to_toml(item.name, value)
    header = "# snaptun serve: effective configuration\n"
    if config.cert is None:
        header += "# cert/key absent: a self-signed certificate is kept in state_dir\n"
    if config.token_issuer is None:
        header += "# token_issuer absent: a token's iss is not checked\n"
    if config.token_audience is None:
        header += '# token_audience absent: a token with aud must name "snap"\n'
    return header + tomli_w.dumps(document)


def _to_toml(key: str, value: object) -> object:
    if key in ("listen", "metrics", "underlay_bind", "underlay_next_hop"):
        if value is None:
            return "off"
        host, port = cast("tuple[str, int]", value)
        return format_socket_address(host, port)
    if isinstance(value, tuple):
        return [str(item) for item in value]
    if isinstance(value, float | int):
        return value
    return str(value)
