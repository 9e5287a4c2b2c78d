"""Verified LAN neighbours (relay/sitelink_relay/neighbours.py), with a fake ARP table."""

from __future__ import annotations

import ipaddress

from sitelink_relay import neighbours

HEADER = "IP address       HW type     Flags       HW address            Mask     Device\n"


def table(*rows):
    return HEADER + "".join(
        f"{a:<16} 0x1         {flags}         {mac}     *        {dev}\n"
        for a, mac, flags, dev in rows
    )


def make(rows):
    reads, probes = [], []

    def read():
        reads.append(1)
        return table(*rows)

    n = neighbours.Neighbours(
        "lan0", ipaddress.IPv4Network("192.168.1.0/24"), read_table=read, send_probe=probes.append
    )
    return n, reads, probes


def test_a_complete_entry_on_the_lan_interface_is_verified():
    rows = [("192.168.1.10", "02:00:00:00:00:10", "0x2", "lan0")]
    n, reads, probes = make(rows)
    assert n.verified("192.168.1.10", 1.0)
    assert not n.verified("192.168.1.11", 1.0)  # not in the table: probed once
    assert probes == ["192.168.1.11"]
    assert not n.verified("10.9.9.9", 1.0)  # routed to us: never verified, never probed
    assert probes == ["192.168.1.11"]


def test_the_table_is_read_at_most_every_quarter_second_and_probes_are_bounded():
    n, reads, probes = make([])
    for i in range(1000):  # a flood of forged sources, 1000 in 0.1 s
        assert not n.verified(f"192.168.1.{i % 250 + 1}", 1.0 + i / 10000)
    assert len(reads) == 1
    assert len(probes) <= neighbours.PROBE_RATE * 1.1 + 1  # a burst, then PROBE_RATE a second
    n.verified("192.168.1.200", 1.5)
    assert len(reads) == 2


def test_an_address_is_probed_again_only_after_a_while():
    n, _unused, probes = make([])
    n.verified("192.168.1.50", 1.0)
    n.verified("192.168.1.50", 2.0)
    assert probes == ["192.168.1.50"]
    n.verified("192.168.1.50", 1.0 + neighbours.PROBE_AGAIN + 0.1)
    assert probes == ["192.168.1.50"] * 2


def test_incomplete_other_interface_and_many_addresses_on_one_mac_do_not_count():
    rows = [
        ("192.168.1.10", "02:00:00:00:00:10", "0x2", "lan0"),
        ("192.168.1.11", "00:00:00:00:00:00", "0x0", "lan0"),  # incomplete (no answer)
        ("192.168.1.12", "02:00:00:00:00:12", "0x2", "wan0"),
    ] + [(f"192.168.1.{100 + i}", "02:00:00:00:00:66", "0x2", "lan0") for i in range(5)]
    n, _unused, _unused = make(rows)
    n.refresh()
    assert n.verified_set == {"192.168.1.10"}


def test_an_unreadable_table_verifies_nobody():
    def broken():
        raise OSError("no /proc")

    n = neighbours.Neighbours(
        "lan0", ipaddress.IPv4Network("192.168.1.0/24"), read_table=broken, send_probe=len
    )
    assert not n.verified("192.168.1.10", 1.0)
