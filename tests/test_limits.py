"""
Tests for L{cosgw.policy.limits}: the network rule, connection admission and
per-user session counting.
"""

from __future__ import annotations

from twisted.logger import LogLevel
from twisted.trial.unittest import SynchronousTestCase

from cosgw.policy.limits import (
    ConnectionLimits,
    NetworkRule,
    SessionLimits,
    canonical_ip,
)
from tests.logevents import LogEvents


def _Events(case: SynchronousTestCase) -> LogEvents:
    """The cosgw.policy.limits namespace's log events during C{case}."""
    return LogEvents(case, "cosgw.policy.limits")


class CanonicalIPTests(SynchronousTestCase):
    def test_forms(self) -> None:
        """Mapped IPv6 becomes IPv4, IPv6 is compressed, the rest is kept."""
        self.assertEqual(canonical_ip("::ffff:192.0.2.1"), "192.0.2.1")
        self.assertEqual(canonical_ip("::FFFF:c000:0201"), "192.0.2.1")
        self.assertEqual(canonical_ip("192.0.2.1"), "192.0.2.1")
        self.assertEqual(canonical_ip("2001:DB8:0:0::1"), "2001:db8::1")
        self.assertEqual(canonical_ip("/run/cosgw.sock"), "/run/cosgw.sock")
        self.assertEqual(canonical_ip(""), "")

    def test_ipv6_prefix(self) -> None:
        """IPv6 becomes its network; IPv4 and mapped IPv4 never do."""
        self.assertEqual(canonical_ip("2001:DB8:1:2:3::4", 64), "2001:db8:1:2::/64")
        self.assertEqual(canonical_ip("2001:db8:1:2:3::4", 48), "2001:db8:1::/48")
        self.assertEqual(canonical_ip("2001:db8:1:2:3::4", 128), "2001:db8:1:2:3::4")
        self.assertEqual(canonical_ip("::ffff:192.0.2.1", 64), "192.0.2.1")
        self.assertEqual(canonical_ip("192.0.2.1", 64), "192.0.2.1")
        self.assertEqual(canonical_ip("/run/cosgw.sock", 64), "/run/cosgw.sock")


class NetworkRuleTests(SynchronousTestCase):
    def test_empty_rule_allows_all(self) -> None:
        """No lists: every address, and a non-IP peer, is allowed."""
        rule = NetworkRule()
        self.assertFalse(rule)
        for ip in ["192.0.2.1", "2001:db8::1", "::ffff:10.0.0.1", "/run/x.sock", ""]:
            self.assertTrue(rule.allows(ip), ip)

    def test_allowed_list(self) -> None:
        """A non-empty allowed list admits only its networks."""
        rule = NetworkRule(allowed=["10.0.0.0/8", "192.0.2.7"])
        self.assertTrue(rule)
        self.assertTrue(rule.allows("10.0.0.0"))
        self.assertTrue(rule.allows("10.255.255.255"))
        self.assertTrue(rule.allows("192.0.2.7"))
        self.assertFalse(rule.allows("192.0.2.8"))
        self.assertFalse(rule.allows("11.0.0.0"))
        self.assertFalse(rule.allows("9.255.255.255"))

    def test_denied_list(self) -> None:
        """A denied list alone refuses its networks and admits the rest."""
        rule = NetworkRule(denied=["203.0.113.0/24"])
        self.assertTrue(rule)
        self.assertFalse(rule.allows("203.0.113.1"))
        self.assertTrue(rule.allows("203.0.114.1"))
        self.assertTrue(rule.allows("2001:db8::1"))

    def test_denied_wins(self) -> None:
        """An address both allowed and denied is refused."""
        rule = NetworkRule(allowed=["10.0.0.0/8"], denied=["10.6.6.0/24"])
        self.assertTrue(rule.allows("10.6.5.255"))
        self.assertFalse(rule.allows("10.6.6.0"))
        self.assertFalse(rule.allows("10.6.6.255"))
        self.assertTrue(rule.allows("10.6.7.0"))

    def test_host_bits_are_ignored(self) -> None:
        """C{10.1.2.3/8} is read as C{10.0.0.0/8}, not refused."""
        rule = NetworkRule(allowed=["10.1.2.3/8"])
        self.assertTrue(rule.allows("10.200.0.1"))
        self.assertFalse(rule.allows("11.0.0.1"))

    def test_ipv6(self) -> None:
        """IPv6 networks match IPv6 addresses, never IPv4 ones."""
        rule = NetworkRule(allowed=["2001:db8::/32"], denied=["2001:db8:bad::/48"])
        self.assertTrue(rule.allows("2001:db8:1::5"))
        self.assertTrue(rule.allows("2001:DB8:1::5"))
        self.assertFalse(rule.allows("2001:db8:bad::1"))
        self.assertFalse(rule.allows("2001:db9::1"))
        self.assertFalse(rule.allows("192.0.2.1"))

    def test_ipv4_mapped_address_matches_ipv4_networks(self) -> None:
        """An IPv4 client of a dual-stack listener is matched as IPv4."""
        rule = NetworkRule(allowed=["192.0.2.0/24"], denied=["192.0.2.66/32"])
        self.assertTrue(rule.allows("::ffff:192.0.2.1"))
        self.assertFalse(rule.allows("::ffff:192.0.2.66"))
        self.assertFalse(rule.allows("::ffff:198.51.100.1"))

    def test_ipv4_mapped_network_matches_ipv4(self) -> None:
        """A network written in mapped form matches the IPv4 addresses."""
        rule = NetworkRule(denied=["::ffff:10.0.0.0/104"])
        self.assertFalse(rule.allows("10.9.9.9"))
        self.assertFalse(rule.allows("::ffff:10.9.9.9"))
        self.assertTrue(rule.allows("11.0.0.1"))
        self.assertEqual(repr(rule), "NetworkRule(allowed=[], denied=['10.0.0.0/8'])")

    def test_unparsable_peer_refused_by_any_restriction(self) -> None:
        """A non-IP peer cannot be matched, so any rule refuses it."""
        self.assertFalse(NetworkRule(allowed=["10.0.0.0/8"]).allows("/run/x.sock"))
        self.assertFalse(NetworkRule(denied=["10.0.0.0/8"]).allows("/run/x.sock"))
        self.assertFalse(NetworkRule(denied=["10.0.0.0/8"]).allows(""))

    def test_bad_network_is_an_error(self) -> None:
        self.assertRaises(ValueError, NetworkRule, ["10.0.0.0/33"])
        self.assertRaises(ValueError, NetworkRule, (), ["not a network"])


class ConnectionLimitsTests(SynchronousTestCase):
    def test_unlimited(self) -> None:
        """Without limits every connection is admitted and counted."""
        limits = ConnectionLimits()
        for _ in range(1000):
            self.assertIsNone(limits.open("192.0.2.1"))
        self.assertEqual(limits.total, 1000)
        self.assertEqual(limits.count("192.0.2.1"), 1000)

    def test_total_limit(self) -> None:
        """The gateway-wide limit counts every address; a close frees a slot."""
        events = _Events(self)
        limits = ConnectionLimits(max_total=3)
        self.assertIsNone(limits.open("192.0.2.1"))
        self.assertIsNone(limits.open("192.0.2.2"))
        self.assertIsNone(limits.open("2001:db8::1"))
        self.assertEqual(
            limits.open("192.0.2.4"), "too many connections (3), try again later"
        )
        self.assertEqual(limits.total, 3)
        self.assertEqual(limits.count("192.0.2.4"), 0)
        limits.close("192.0.2.2")
        self.assertEqual(limits.total, 2)
        self.assertIsNone(limits.open("192.0.2.4"))
        self.assertEqual(limits.total, 3)
        self.assertEqual(
            [(e["ip"], e["reason"]) for e in events.at(LogLevel.info)],
            [("192.0.2.4", "too many connections (3), try again later")],
        )

    def test_per_ip_limit(self) -> None:
        """One address may hold max_per_ip; others are not affected."""
        limits = ConnectionLimits(max_per_ip=2)
        self.assertIsNone(limits.open("192.0.2.1"))
        self.assertIsNone(limits.open("192.0.2.1"))
        self.assertEqual(
            limits.open("192.0.2.1"), "too many connections from your address (2)"
        )
        self.assertIsNone(limits.open("192.0.2.2"))
        self.assertEqual(limits.count("192.0.2.1"), 2)
        self.assertEqual(limits.count("192.0.2.2"), 1)
        self.assertEqual(limits.total, 3)
        limits.close("192.0.2.1")
        self.assertEqual(limits.count("192.0.2.1"), 1)
        self.assertIsNone(limits.open("192.0.2.1"))
        self.assertEqual(limits.count("192.0.2.1"), 2)

    def test_total_checked_before_per_ip(self) -> None:
        """When both limits are reached the gateway-wide reason is given."""
        limits = ConnectionLimits(max_total=2, max_per_ip=2)
        limits.open("192.0.2.1")
        limits.open("192.0.2.1")
        self.assertEqual(
            limits.open("192.0.2.1"), "too many connections (2), try again later"
        )

    def test_network_rule(self) -> None:
        """A refused address is not counted and does not use a slot."""
        events = _Events(self)
        limits = ConnectionLimits(
            max_total=1, network=NetworkRule(denied=["203.0.113.0/24"])
        )
        self.assertEqual(
            limits.open("::ffff:203.0.113.9"), "your address is not allowed"
        )
        self.assertEqual(limits.total, 0)
        self.assertIsNone(limits.open("192.0.2.1"))
        self.assertEqual(
            [(e["ip"], e["reason"]) for e in events.at(LogLevel.info)],
            [("203.0.113.9", "your address is not allowed")],
        )

    def test_mapped_address_counts_as_ipv4(self) -> None:
        """::ffff:192.0.2.1 and 192.0.2.1 share the per-address count."""
        limits = ConnectionLimits(max_per_ip=2)
        self.assertIsNone(limits.open("::ffff:192.0.2.1"))
        self.assertIsNone(limits.open("192.0.2.1"))
        self.assertEqual(
            limits.open("::ffff:192.0.2.1"),
            "too many connections from your address (2)",
        )
        self.assertEqual(limits.count("192.0.2.1"), 2)
        self.assertEqual(limits.count("::ffff:192.0.2.1"), 2)
        limits.close("::ffff:192.0.2.1")
        limits.close("192.0.2.1")
        self.assertEqual(limits.count("192.0.2.1"), 0)
        self.assertEqual(limits.total, 0)

    def test_close_of_unknown_address_never_goes_negative(self) -> None:
        """A close with nothing counted warns and changes nothing."""
        events = _Events(self)
        limits = ConnectionLimits(max_total=1)
        limits.close("192.0.2.1")
        self.assertEqual(limits.total, 0)
        self.assertEqual(limits.count("192.0.2.1"), 0)
        self.assertIsNone(limits.open("192.0.2.2"))
        limits.close("192.0.2.2")
        limits.close("192.0.2.2")
        self.assertEqual(limits.total, 0)
        self.assertEqual(limits.count("192.0.2.2"), 0)
        # The limit still admits exactly one.
        self.assertIsNone(limits.open("192.0.2.3"))
        self.assertEqual(
            limits.open("192.0.2.4"), "too many connections (1), try again later"
        )
        self.assertEqual(
            [e["ip"] for e in events.at(LogLevel.warn)], ["192.0.2.1", "192.0.2.2"]
        )

    def test_closed_addresses_hold_no_memory(self) -> None:
        """An address with no open connection is forgotten."""
        limits = ConnectionLimits()
        for n in range(100):
            limits.open(f"10.0.0.{n}")
        for n in range(100):
            limits.close(f"10.0.0.{n}")
        self.assertEqual(limits._per_ip, {})
        self.assertEqual(limits.total, 0)

    def test_ipv6_counted_per_network(self) -> None:
        """
        Every address of one /64 (the default) counts against one limit;
        another /64 has its own; with ipv6_prefix 128, each address.
        """
        events = _Events(self)
        limits = ConnectionLimits(max_per_ip=2)
        self.assertIsNone(limits.open("2001:db8:1:2::1"))
        self.assertIsNone(limits.open("2001:db8:1:2::2"))
        self.assertEqual(
            limits.open("2001:db8:1:2:ffff::3"),
            "too many connections from your address (2)",
        )
        self.assertIsNone(limits.open("2001:db8:1:3::1"))
        self.assertEqual(limits.count("2001:db8:1:2::99"), 2)
        ((ip, key),) = [(e["ip"], e["counted_as"]) for e in events.at(LogLevel.info)]
        self.assertEqual((ip, key), ("2001:db8:1:2:ffff::3", "2001:db8:1:2::/64"))
        limits.close("2001:db8:1:2::1")
        limits.close("2001:db8:1:2::2")
        limits.close("2001:db8:1:3::1")
        self.assertEqual((limits._per_ip, limits.total), ({}, 0))
        per_address = ConnectionLimits(max_per_ip=1, ipv6_prefix=128)
        self.assertIsNone(per_address.open("2001:db8:1:2::1"))
        self.assertIsNone(per_address.open("2001:db8:1:2::2"))

    def test_bad_limits(self) -> None:
        """A limit below 1 is an error; None means no limit."""
        self.assertRaises(ValueError, ConnectionLimits, max_total=0)
        self.assertRaises(ValueError, ConnectionLimits, max_per_ip=0)
        self.assertRaises(ValueError, ConnectionLimits, ipv6_prefix=129)


class SessionLimitsTests(SynchronousTestCase):
    def test_limit(self) -> None:
        """A user may hold max_sessions; a logout frees one."""
        events = _Events(self)
        sessions = SessionLimits()
        self.assertTrue(sessions.login("alice", 2))
        self.assertTrue(sessions.login("alice", 2))
        self.assertFalse(sessions.login("alice", 2))
        self.assertEqual(sessions.count("alice"), 2)
        self.assertTrue(sessions.login("bob", 2))
        self.assertEqual(sessions.count("bob"), 1)
        sessions.logout("alice")
        self.assertEqual(sessions.count("alice"), 1)
        self.assertTrue(sessions.login("alice", 2))
        self.assertEqual(sessions.count("alice"), 2)
        self.assertEqual(
            [
                (e["user"], e["sessions"], e["max_sessions"])
                for e in events.at(LogLevel.info)
            ],
            [("alice", 2, 2)],
        )

    def test_unlimited(self) -> None:
        """max_sessions None never refuses."""
        sessions = SessionLimits()
        for _ in range(500):
            self.assertTrue(sessions.login("alice", None))
        self.assertEqual(sessions.count("alice"), 500)

    def test_lower_limit_applies_to_new_sessions(self) -> None:
        """A limit lowered by a reload refuses new sessions only."""
        sessions = SessionLimits()
        for _ in range(3):
            sessions.login("alice", None)
        self.assertFalse(sessions.login("alice", 1))
        self.assertEqual(sessions.count("alice"), 3)

    def test_logout_never_goes_negative(self) -> None:
        """A logout with no session counted warns and changes nothing."""
        events = _Events(self)
        sessions = SessionLimits()
        sessions.logout("alice")
        self.assertEqual(sessions.count("alice"), 0)
        self.assertTrue(sessions.login("alice", 1))
        self.assertFalse(sessions.login("alice", 1))
        sessions.logout("alice")
        sessions.logout("alice")
        self.assertEqual(sessions.count("alice"), 0)
        self.assertTrue(sessions.login("alice", 1))
        self.assertEqual(sessions.count("alice"), 1)
        self.assertEqual(
            [e["user"] for e in events.at(LogLevel.warn)], ["alice", "alice"]
        )
        self.assertEqual(sessions._sessions, {"alice": 1})

    def test_bad_limit(self) -> None:
        """max_sessions below 1 is an error, not a silent refusal."""
        self.assertRaises(ValueError, SessionLimits().login, "alice", 0)
