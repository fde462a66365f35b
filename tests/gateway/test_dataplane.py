"""The data plane's SCMP answers, without sockets: rate-limited per tunnel, suppressions counted.

A fake sender stands for the tunnel's QUIC side and a list cell for the clock,
so every test decides exactly how much time passes between packets.
"""

from __future__ import annotations

import argparse
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import snaptun.gateway.dataplane as dataplane_module
from snaptun.core.addressing import EndhostAddress
from snaptun.errors import SendBufferFull
from snaptun.gateway.config import ConfigError, GatewayConfig, add_serve_arguments, resolve_config
from snaptun.gateway.dataplane import Dataplane, TunnelPort
from snaptun.gateway.metrics import GatewayMetrics
from snaptun.scion import (
    ParameterProblemCode,
    ScmpParameterProblem,
    build_parameter_problem,
    decode,
    decode_scmp,
)
from tests.gateway._fakes import FakeControl, FakeSender
from tests.gateway._gateway import scion_udp

ME = EndhostAddress.parse("1-ff00:0:110,10.0.0.5")
OTHER = EndhostAddress.parse("1-ff00:0:110,10.0.0.6")
FOREIGN = EndhostAddress.parse("2-ff00:0:220,192.0.2.80")
GATEWAY = EndhostAddress.parse("1-ff00:0:110,10.0.0.1")
SPOOFED = scion_udp(FOREIGN, OTHER, b"spoof")  # source is not the sending tunnel's address


class _Plane:
    """A data plane with a hand-driven clock and one attached tunnel (``ME``)."""

    def __init__(self, *, rate: float, burst: int, gateway: bool = True) -> None:
        self.now = 1000.0
        self.metrics = GatewayMetrics()
        self.plane = Dataplane(
            self.metrics,
            gateway_addresses=[GATEWAY.ip] if gateway else [],
            next_hop=("127.0.0.1", 9),
            scmp_rate=rate,
            scmp_burst=burst,
            clock=lambda: self.now,
        )
        self.port, self.sender, self.control = self.attach(ME)

    def attach(self, address: EndhostAddress) -> tuple[TunnelPort, FakeSender, FakeControl]:
        sender, control = FakeSender(address), FakeControl(address)
        return self.plane.attach(sender, control), sender, control  # type: ignore[arg-type]

    def sample(self, name: str, labels: dict[str, str] | None = None) -> float:
        return self.metrics.registry.get_sample_value(name, labels or {}) or 0.0

    @property
    def suppressed(self) -> float:
        return self.sample("snaptun_gateway_scmp_suppressed_total")

    def drops(self, reason: str) -> float:
        return self.sample("snaptun_gateway_drops_total", {"reason": reason})


def test_a_burst_of_violations_gets_at_most_burst_answers_then_the_rate() -> None:
    defaults = GatewayConfig()
    env = _Plane(rate=defaults.scmp_rate, burst=defaults.scmp_burst)
    for _ in range(1000):
        env.plane.from_tunnel(env.port, SPOOFED)
    burst = defaults.scmp_burst
    assert len(env.sender.sent) == burst
    assert env.suppressed == 1000 - burst
    assert env.drops("invalid_source_address") == 1000  # every drop is still counted
    assert env.sample("snaptun_gateway_scmp_sent_total", {"code": "33"}) == burst
    for answer in env.sender.sent:
        reply = decode(answer)
        message = decode_scmp(reply.payload, reply.address)
        assert isinstance(message, ScmpParameterProblem)
        assert message.code == ParameterProblemCode.INVALID_SOURCE_ADDRESS
        assert reply.destination == ME  # into the tunnel, not to the spoofed source

    # Half a second at the default rate refills rate/2 tokens, and answers resume.
    env.now += 0.5
    for _ in range(100):
        env.plane.from_tunnel(env.port, SPOOFED)
    resumed = int(defaults.scmp_rate * 0.5)
    assert len(env.sender.sent) == burst + resumed
    assert env.suppressed == 1000 - burst + 100 - resumed
    # A long quiet spell refills no more than the burst.
    env.now += 3600.0
    for _ in range(1000):
        env.plane.from_tunnel(env.port, SPOOFED)
    assert len(env.sender.sent) == 2 * burst + resumed


def test_the_bucket_is_checked_before_the_answer_is_built(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    built: list[int] = []

    def counting(*args: Any, **kwargs: Any) -> bytes:
        built.append(1)
        return build_parameter_problem(*args, **kwargs)

    monkeypatch.setattr(dataplane_module, "build_parameter_problem", counting)
    env = _Plane(rate=0.0, burst=2)
    for _ in range(500):
        env.plane.from_tunnel(env.port, SPOOFED)
    assert len(built) == 2  # the 498 suppressed answers cost no reply
    assert len(env.sender.sent) == 2
    assert env.suppressed == 498


def test_each_tunnel_has_its_own_bucket_and_keeps_it_when_readdressed() -> None:
    env = _Plane(rate=0.0, burst=1)
    other, other_sender, _ = env.attach(OTHER)
    env.plane.from_tunnel(env.port, SPOOFED)
    env.plane.from_tunnel(env.port, SPOOFED)
    assert (len(env.sender.sent), env.suppressed) == (1, 1)
    env.plane.from_tunnel(other, scion_udp(FOREIGN, ME, b"spoof"))
    assert len(other_sender.sent) == 1  # the other tunnel's first answer is not suppressed
    # A new address is no new budget.
    env.control.move_to(EndhostAddress.parse("1-ff00:0:110,10.0.0.7"))
    env.plane.from_tunnel(env.port, SPOOFED)
    assert (len(env.sender.sent), env.suppressed) == (1, 2)


def test_unanswerable_violations_spend_no_tokens_and_are_not_counted_as_suppressed() -> None:
    env = _Plane(rate=0.0, burst=1)
    # An SCMP error from the client (from the gateway's address: a violation) is never answered.
    scmp_error = build_parameter_problem(SPOOFED, 16, 0, GATEWAY, ME)
    for _ in range(10):
        env.plane.from_tunnel(env.port, scmp_error)
    assert (len(env.sender.sent), env.suppressed) == (0, 0)
    assert env.drops("invalid_source_address") == 10
    env.plane.from_tunnel(env.port, SPOOFED)
    assert len(env.sender.sent) == 1  # the one token was still there

    # Without a gateway address in the client's family there is nothing to answer from.
    silent = _Plane(rate=0.0, burst=1, gateway=False)
    for _ in range(10):
        silent.plane.from_tunnel(silent.port, SPOOFED)
    assert (len(silent.sender.sent), silent.suppressed) == (0, 0)
    assert silent.drops("invalid_source_address") == 10


def test_valid_packets_spend_no_tokens() -> None:
    env = _Plane(rate=0.0, burst=1)
    _, other_sender, _ = env.attach(OTHER)
    for _ in range(50):
        env.plane.from_tunnel(env.port, scion_udp(ME, OTHER, b"ok"))
    assert len(other_sender.sent) == 50
    env.plane.from_tunnel(env.port, SPOOFED)
    assert (len(env.sender.sent), env.suppressed) == (1, 0)


@settings(max_examples=60, deadline=None)
@given(
    rate=st.floats(min_value=0, max_value=200),
    burst=st.integers(min_value=1, max_value=30),
    steps=st.lists(
        st.tuples(st.floats(min_value=0, max_value=0.3), st.integers(min_value=0, max_value=40)),
        min_size=1,
        max_size=30,
    ),
)
def test_answers_never_exceed_burst_plus_rate_times_elapsed(
    rate: float, burst: int, steps: list[tuple[float, int]]
) -> None:
    env = _Plane(rate=rate, burst=burst)
    start, violations = env.now, 0
    for wait, count in steps:
        env.now += wait
        for _ in range(count):
            env.plane.from_tunnel(env.port, SPOOFED)
        violations += count
        answers = len(env.sender.sent)
        assert answers <= burst + rate * (env.now - start) + 1e-6
        assert answers + env.suppressed == violations  # each violation answered or counted
    assert env.drops("invalid_source_address") == violations


def _resolve(*argv: str, env: dict[str, str] | None = None) -> GatewayConfig:
    parser = argparse.ArgumentParser(prog="serve", exit_on_error=False)
    add_serve_arguments(parser)
    return resolve_config(parser.parse_args(list(argv)), env or {})


def test_scmp_settings_from_flags_and_environment() -> None:
    config = _resolve("--scmp-rate=2.5", env={"SNAPTUN_SCMP_BURST": "7"})
    assert (config.scmp_rate, config.scmp_burst) == (2.5, 7)
    assert (GatewayConfig().scmp_rate, GatewayConfig().scmp_burst) == (10.0, 20)


@pytest.mark.parametrize(
    ("argv", "key"),
    [
        (["--scmp-rate=-1"], "scmp_rate"),
        (["--scmp-rate=inf"], "scmp_rate"),
        (["--scmp-rate=nan"], "scmp_rate"),
        (["--scmp-burst=0"], "scmp_burst"),
        (["--scmp-burst=1.5"], "scmp_burst"),
    ],
)
def test_bad_scmp_settings_are_refused_naming_the_key(argv: list[str], key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        _resolve(*argv)
    assert caught.value.key == key


def _accounting(port: TunnelPort) -> tuple[int, int, int, int, int, int]:
    return (
        port.from_client_packets,
        port.from_client_bytes,
        port.to_client_packets,
        port.to_client_bytes,
        port.drops,
        port.scmp_sent,
    )


def test_per_tunnel_accounting_follows_each_packet() -> None:
    p = _Plane(rate=10, burst=5)
    other, other_sender, _ = p.attach(OTHER)
    switched = scion_udp(ME, OTHER, b"to other")
    p.plane.from_tunnel(p.port, switched)  # switched locally: from ME, to OTHER
    inbound = scion_udp(FOREIGN, ME, b"from far away")
    p.plane.from_underlay(inbound)
    p.plane.from_tunnel(p.port, scion_udp(ME, FOREIGN, b"x"))  # no underlay socket: dropped
    p.plane.from_tunnel(p.port, SPOOFED)  # a violation: dropped and answered
    assert other_sender.sent == [switched]
    assert p.sender.sent[0] == inbound
    assert len(p.sender.sent) == 2  # the SCMP answer
    assert _accounting(p.port) == (1, len(switched), 1, len(inbound), 2, 1)
    assert _accounting(other) == (0, 0, 1, len(switched), 0, 0)


def test_a_packet_the_tunnel_cannot_take_is_a_drop_of_that_tunnel() -> None:
    p = _Plane(rate=10, burst=5)
    other, other_sender, _ = p.attach(OTHER)

    def full(packet: bytes) -> None:
        raise SendBufferFull(1)

    other_sender.send = full  # type: ignore[method-assign]
    other_sender.send_many = lambda packets: False  # type: ignore[method-assign]  # a full queue
    p.plane.from_tunnel(p.port, scion_udp(ME, OTHER, b"to other"))
    p.plane.from_underlay(scion_udp(FOREIGN, OTHER, b"from far away"))
    assert _accounting(other) == (0, 0, 0, 0, 2, 0)
    assert _accounting(p.port) == (0, 0, 0, 0, 0, 0)
    assert p.drops("tunnel_queue_full") == 2
