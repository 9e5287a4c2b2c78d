"""The kernel drops cut-off sources: a socket filter, checked over loopback."""

from __future__ import annotations

import socket

import pytest
from sitelink_relay import sockfilter


def udp(addr):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, 0))
    s.settimeout(0.3)
    return s


def test_listed_sources_are_dropped_others_pass_and_the_filter_comes_off():
    rx, a, b = udp("127.0.0.1"), udp("127.0.0.2"), udp("127.0.0.3")
    try:
        sockfilter.drop_sources(rx, ["127.0.0.2", "10.0.0.9"])
        a.sendto(b"from a", rx.getsockname())
        b.sendto(b"from b", rx.getsockname())
        assert rx.recvfrom(100)[0] == b"from b"
        with pytest.raises(socket.timeout):
            rx.recvfrom(100)
        sockfilter.drop_sources(rx, [])
        sockfilter.drop_sources(rx, [])  # no filter to detach: fine
        a.sendto(b"a again", rx.getsockname())
        assert rx.recvfrom(100)[0] == b"a again"
    finally:
        for s in (rx, a, b):
            s.close()


def test_program_shape_and_limit():
    code = sockfilter.program(["192.168.1.66", "192.168.1.67"])
    assert len(code) == 8 * (1 + 2 + 2)
    assert sockfilter.program([]) and len(sockfilter.program(["10.0.0.1"] * 3)) == 8 * 4
    with pytest.raises(ValueError):
        sockfilter.program(f"10.0.{i // 250}.{i % 250}" for i in range(sockfilter.MAX_SOURCES + 1))


@pytest.mark.parametrize("kept_on, passes", [(1, True), (999, False)])
def test_a_kept_address_passes_only_on_its_interface(kept_on, passes):
    """A peer's address cut off for forgeries: dropped, except on the peer's own interface
    (here: loopback, ifindex 1)."""
    rx, a, b = udp("127.0.0.1"), udp("127.0.0.2"), udp("127.0.0.3")
    try:
        sockfilter.drop_sources(rx, ["127.0.0.3"], {"127.0.0.2": kept_on})
        a.sendto(b"from a", rx.getsockname())
        b.sendto(b"from b", rx.getsockname())
        if passes:
            assert rx.recvfrom(100)[0] == b"from a"
        with pytest.raises(socket.timeout):
            rx.recvfrom(100)
    finally:
        for s in (rx, a, b):
            s.close()


def test_kept_addresses_jump_to_their_own_block():
    plain = [f"10.0.0.{i}" for i in range(1, 180)]
    keep = {f"192.168.2.{i}": 100 + i for i in range(1, sockfilter.MAX_KEPT + 1)}
    code = sockfilter.program(plain, keep)
    assert len(code) == 8 * (1 + len(plain) + len(keep) + 2 + 4 * len(keep))
    with pytest.raises(ValueError):
        sockfilter.program([], {f"10.1.0.{i}": 1 for i in range(sockfilter.MAX_KEPT + 1)})
