"""Configuration of ``snaptun serve``: sources, precedence, validation, TOML round trip."""

from __future__ import annotations

import argparse
import ipaddress
import tomllib
from pathlib import Path

import pytest

from snaptun.core.addressing import IsdAs
from snaptun.errors import SnaptunError
from snaptun.gateway.config import (
    ConfigError,
    GatewayConfig,
    add_serve_arguments,
    render_toml,
    resolve_config,
)

IP = ipaddress.ip_address
NET = ipaddress.ip_network


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="serve", exit_on_error=False)
    add_serve_arguments(parser)
    return parser.parse_args(list(argv))


def resolve(
    *argv: str, env: dict[str, str] | None = None, home: Path | None = None
) -> GatewayConfig:
    environ = {"XDG_STATE_HOME": str(home)} if home is not None else {}
    return resolve_config(parse(*argv), {**environ, **(env or {})})


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_every_flag_defaults_to_none() -> None:
    args = parse()
    assert all(value is None for value in vars(args).values())
    assert "token_key" in vars(args)
    assert "print_config" in vars(args)


def test_defaults(tmp_path: Path) -> None:
    config = resolve(home=tmp_path)
    assert config == GatewayConfig(state_dir=tmp_path / "snaptun")
    assert config.listen == ("127.0.0.1", 4433)
    assert config.isd_as == IsdAs.parse("1-ff00:0:110")
    assert config.pools == (NET("10.0.0.0/24"), NET("fd00::/64"))
    assert config.gateway_addresses == (IP("10.0.0.1"), IP("fd00::1"))
    assert config.metrics == ("127.0.0.1", 9464)
    assert config.hold == 600.0
    assert config.cert is None
    assert config.token_keys == ()


def test_default_state_dir_without_xdg() -> None:
    assert resolve().state_dir == Path.home() / ".local" / "state" / "snaptun"


def test_flags(tmp_path: Path) -> None:
    config = resolve(
        "--listen=[::1]:5000",
        "--cert=c.pem",
        "--key=/abs/k.pem",
        "--token-key=a.pem",
        "--token-key=b.pem",
        "--isd-as=2-ff00:0:220",
        "--pool=192.168.0.0/16",
        "--pool=fd01::/48",
        "--gateway-address=192.168.0.254",
        "--gateway-address=fd01::fe",
        "--hold=1.5",
        "--metrics=off",
        "--underlay-bind=0.0.0.0:1",
        "--underlay-next-hop=192.0.2.1:2",
        "--max-tunnels=7",
        f"--state-dir={tmp_path}",
        "--mtu=1300",
        "--tunnel-queue=8",
        "--underlay-queue=9",
        "--max-half-open=10",
        "--source-rate=2.5",
        "--source-burst=11",
        "--handshake-timeout=0.5",
        "--retry=ALWAYS",
        "--scmp-rate=0",
        "--scmp-burst=12",
        "--socket-buffer=65536",
        "--log-level=DEBUG",
    )
    cwd = Path.cwd()
    assert config == GatewayConfig(
        listen=("::1", 5000),
        cert=cwd / "c.pem",
        key=Path("/abs/k.pem"),
        token_keys=(cwd / "a.pem", cwd / "b.pem"),
        isd_as=IsdAs.parse("2-ff00:0:220"),
        pools=(NET("192.168.0.0/16"), NET("fd01::/48")),
        gateway_addresses=(IP("192.168.0.254"), IP("fd01::fe")),
        hold=1.5,
        metrics=None,
        underlay_bind=("0.0.0.0", 1),
        underlay_next_hop=("192.0.2.1", 2),
        max_tunnels=7,
        state_dir=tmp_path,
        mtu=1300,
        tunnel_queue=8,
        underlay_queue=9,
        max_half_open=10,
        source_rate=2.5,
        source_burst=11,
        handshake_timeout=0.5,
        retry="always",
        scmp_rate=0.0,
        scmp_burst=12,
        socket_buffer=65536,
        log_level="debug",
    )


def test_environment_lists_are_comma_separated(tmp_path: Path) -> None:
    config = resolve(
        env={
            "SNAPTUN_POOL": "192.168.1.0/24, fd02::/64",
            "SNAPTUN_TOKEN_KEY": "/k/p1.pem,/k/p2.pem",
            "SNAPTUN_LISTEN": "127.0.0.2:1",
            "SNAPTUN_HOLD": "30",
            "SNAPTUN_STATE_DIR": str(tmp_path),
            "SNAPTUN_METRICS": "OFF",
        }
    )
    assert config.pools == (NET("192.168.1.0/24"), NET("fd02::/64"))
    assert config.token_keys == (Path("/k/p1.pem"), Path("/k/p2.pem"))
    assert config.listen == ("127.0.0.2", 1)
    assert config.hold == 30.0
    assert config.state_dir == tmp_path
    assert config.metrics is None


def test_gateway_addresses_default_to_first_host_of_each_pool(tmp_path: Path) -> None:
    config = resolve("--pool=192.168.7.0/24", "--pool=2001:db8::/64", home=tmp_path)
    assert config.gateway_addresses == (IP("192.168.7.1"), IP("2001:db8::1"))


def test_precedence_flag_over_env_over_file(tmp_path: Path) -> None:
    file = write(
        tmp_path / "serve.toml",
        'listen = "127.0.0.1:1"\nmtu = 1400\nhold = 5\nlog_level = "warning"\n',
    )
    env = {"SNAPTUN_CONFIG": str(file), "SNAPTUN_LISTEN": "127.0.0.1:2", "SNAPTUN_MTU": "1300"}
    config = resolve("--listen=127.0.0.1:3", env=env, home=tmp_path)
    assert config.listen == ("127.0.0.1", 3)  # flag
    assert config.mtu == 1300  # environment
    assert config.hold == 5.0  # file
    assert config.log_level == "warning"  # file
    assert config.max_tunnels == 1024  # default


def test_config_flag_beats_config_env(tmp_path: Path) -> None:
    one = write(tmp_path / "one.toml", "mtu = 1301\n")
    two = write(tmp_path / "two.toml", "mtu = 1302\n")
    assert resolve(f"--config={one}", env={"SNAPTUN_CONFIG": str(two)}).mtu == 1301
    assert resolve(env={"SNAPTUN_CONFIG": str(two)}).mtu == 1302


def test_lists_are_replaced_not_merged(tmp_path: Path) -> None:
    file = write(tmp_path / "c.toml", 'pools = ["10.9.0.0/24", "fd09::/64"]\n')
    config = resolve(f"--config={file}", "--pool=10.8.0.0/24", home=tmp_path)
    assert config.pools == (NET("10.8.0.0/24"),)
    assert config.gateway_addresses == (IP("10.8.0.1"),)


def test_file_paths_are_relative_to_the_file(tmp_path: Path) -> None:
    folder = tmp_path / "etc"
    folder.mkdir()
    file = write(
        folder / "c.toml",
        'cert = "tls/c.pem"\nkey = "/abs/k.pem"\ntoken_keys = ["t.pem"]\nstate_dir = "state"\n',
    )
    config = resolve(f"--config={file}")
    assert config.cert == folder / "tls" / "c.pem"
    assert config.key == Path("/abs/k.pem")
    assert config.token_keys == (folder / "t.pem",)
    assert config.state_dir == folder / "state"


def test_empty_environment_value_means_unset(tmp_path: Path) -> None:
    assert resolve(env={"SNAPTUN_MTU": "  "}, home=tmp_path).mtu == 1452


def test_config_error_is_value_error_and_snaptun_error() -> None:
    assert issubclass(ConfigError, ValueError)
    assert issubclass(ConfigError, SnaptunError)


@pytest.mark.parametrize(
    ("argv", "env", "key", "source", "origin"),
    [
        (["--listen=nonsense"], {}, "listen", "flag", "--listen"),
        (["--listen=[::1]"], {}, "listen", "flag", "--listen"),
        ([], {"SNAPTUN_POOL": "10.0.0.1/24"}, "pools", "env", "SNAPTUN_POOL"),
        ([], {"SNAPTUN_POOL": "10.0.0.0/24,bad"}, "pools", "env", "SNAPTUN_POOL"),
        (["--isd-as=1-"], {}, "isd_as", "flag", "--isd-as"),
        (["--isd-as=0-ff00:0:1"], {}, "isd_as", "flag", "--isd-as"),
        (["--hold=soon"], {}, "hold", "flag", "--hold"),
        (["--hold=-1"], {}, "hold", "flag", "--hold"),
        (["--hold=nan"], {}, "hold", "flag", "--hold"),
        ([], {"SNAPTUN_MAX_TUNNELS": "0"}, "max_tunnels", "env", "SNAPTUN_MAX_TUNNELS"),
        (["--max-tunnels=1.5"], {}, "max_tunnels", "flag", "--max-tunnels"),
        (["--mtu=500"], {}, "mtu", "flag", "--mtu"),
        (["--tunnel-queue=0"], {}, "tunnel_queue", "flag", "--tunnel-queue"),
        ([], {"SNAPTUN_UNDERLAY_QUEUE": "x"}, "underlay_queue", "env", "SNAPTUN_UNDERLAY_QUEUE"),
        (["--log-level=loud"], {}, "log_level", "flag", "--log-level"),
        (["--socket-buffer=-1"], {}, "socket_buffer", "flag", "--socket-buffer"),
        ([], {"SNAPTUN_SOCKET_BUFFER": "4M"}, "socket_buffer", "env", "SNAPTUN_SOCKET_BUFFER"),
        (["--metrics=on"], {}, "metrics", "flag", "--metrics"),
        (["--gateway-address=10.0.0"], {}, "gateway_addresses", "flag", "--gateway-address"),
        (["--cert=c.pem"], {}, "cert", "flag", "--cert"),
        ([], {"SNAPTUN_KEY": "k.pem"}, "key", "env", "SNAPTUN_KEY"),
        (["--state-dir="], {}, "state_dir", "flag", "--state-dir"),
    ],
)
def test_bad_values_name_key_and_source(
    argv: list[str], env: dict[str, str], key: str, source: str, origin: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(*argv, env=env)
    assert (caught.value.key, caught.value.source, caught.value.origin) == (key, source, origin)
    assert key in str(caught.value)
    assert origin in str(caught.value)


def test_gateway_address_outside_every_pool() -> None:
    with pytest.raises(ConfigError, match="outside every pool") as caught:
        resolve("--gateway-address=10.0.0.1", "--gateway-address=fd99::1")
    assert (caught.value.key, caught.value.origin) == ("gateway_addresses", "--gateway-address")


def test_pool_family_without_gateway_address() -> None:
    with pytest.raises(ConfigError, match="IPv6") as caught:
        resolve(env={"SNAPTUN_GATEWAY_ADDRESS": "10.0.0.1"})
    assert (caught.value.key, caught.value.source) == ("gateway_addresses", "env")


@pytest.mark.parametrize(
    "pools",
    [
        ["--pool=10.0.0.0/24", "--pool=10.0.0.128/25"],  # overlap
        ["--pool=10.0.0.5/32"],  # nothing left after the gateway's own address
    ],
)
def test_unusable_pools(pools: list[str]) -> None:
    with pytest.raises(ConfigError) as caught:
        resolve(*pools)
    assert caught.value.key == "pools"
    assert caught.value.source == "flag"


def test_duplicate_gateway_address() -> None:
    with pytest.raises(ConfigError, match="twice"):
        resolve("--gateway-address=10.0.0.1", "--gateway-address=10.0.0.1", "--pool=10.0.0.0/24")


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour = 'blue'\n", "colour"),
        ("pools = '10.0.0.0/24'\n", "pools"),  # not a list
        ("pools = [1]\n", "pools"),
        ("pools = []\n", "pools"),
        ("mtu = '1400'\n", "mtu"),  # TOML values are typed
        ("mtu = 1400.0\n", "mtu"),
        ("hold = true\n", "hold"),
        ("listen = 4433\n", "listen"),
        ("metrics = false\n", "metrics"),
        ("listen = { host = 'x' }\n", "listen"),
    ],
)
def test_bad_file_values(tmp_path: Path, text: str, key: str) -> None:
    file = write(tmp_path / "c.toml", text)
    with pytest.raises(ConfigError) as caught:
        resolve(f"--config={file}")
    assert (caught.value.key, caught.value.source, caught.value.origin) == (key, "file", str(file))
    assert str(file) in str(caught.value)


def test_unreadable_or_invalid_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read") as caught:
        resolve(f"--config={tmp_path / 'missing.toml'}")
    assert (caught.value.key, caught.value.source) == ("config", "flag")
    broken = write(tmp_path / "broken.toml", "listen = \n")
    with pytest.raises(ConfigError, match="not valid TOML") as caught:
        resolve(env={"SNAPTUN_CONFIG": str(broken)})
    assert (caught.value.key, caught.value.origin) == ("config", "SNAPTUN_CONFIG")


def test_direct_construction_is_validated() -> None:
    with pytest.raises(ConfigError) as caught:
        GatewayConfig(mtu=10)
    assert (caught.value.key, caught.value.source) == ("mtu", "argument")


def test_cross_field_error_blames_the_given_value(tmp_path: Path) -> None:
    # The default pools need a gateway address of each family; an IPv4-only
    # list given in a file blames the file, not the default pools.
    file = write(tmp_path / "c.toml", 'gateway_addresses = ["10.0.0.1"]\n')
    with pytest.raises(ConfigError) as caught:
        resolve(f"--config={file}")
    assert (caught.value.key, caught.value.source) == ("gateway_addresses", "file")


def test_render_toml_round_trip_defaults(tmp_path: Path) -> None:
    config = resolve(home=tmp_path)
    text = render_toml(config)
    data = tomllib.loads(text)
    assert data["metrics"] == "127.0.0.1:9464"
    assert data["pools"] == ["10.0.0.0/24", "fd00::/64"]
    assert "cert" not in data
    file = write(tmp_path / "out.toml", text)
    assert resolve(f"--config={file}") == config


def test_render_toml_round_trip_everything_set(tmp_path: Path) -> None:
    config = GatewayConfig(
        listen=("::1", 0),
        cert=tmp_path / "c.pem",
        key=tmp_path / "k.pem",
        token_keys=(tmp_path / "a.pem", tmp_path / "b.pem"),
        isd_as=IsdAs.parse("3-64496"),
        pools=(NET("100.64.0.0/10"), NET("2001:db8:1::/48")),
        gateway_addresses=(IP("100.64.0.9"), IP("2001:db8:1::9")),
        hold=0.25,
        metrics=None,
        underlay_bind=("::", 30041),
        underlay_next_hop=("localhost", 30042),
        max_tunnels=3,
        state_dir=tmp_path / "state",
        mtu=1200,
        tunnel_queue=2,
        underlay_queue=5,
        max_half_open=6,
        source_rate=0.5,
        source_burst=7,
        handshake_timeout=2.0,
        retry="never",
        scmp_rate=3.0,
        scmp_burst=4,
        socket_buffer=0,
        log_level="error",
    )
    file = write(tmp_path / "out.toml", render_toml(config))
    assert resolve(f"--config={file}") == config
    assert tomllib.loads(file.read_text())["metrics"] == "off"
