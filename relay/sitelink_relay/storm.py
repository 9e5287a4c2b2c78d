"""Storm control: per-source and global rate limits with a breaker.

One LAN host flooding must not starve the others.  ``StormControl.check`` is asked
once per datagram the relay would forward, in this order:

1. a source whose breaker tripped is dropped as ``cut_off`` until its cutoff ends
   (one dict lookup and a compare: a cut-off flooder costs next to nothing);
2. the source's own rate limit (``rate_limited``), so a flooder's excess is dropped
   before it can use up the global budget the other sources share;
3. for a source that is not a verified neighbour (``verify``: not in the LAN's
   neighbour table, or one MAC claiming many addresses), the one budget all such
   sources share (``unverified``): forged source addresses get no budget of their own;
4. the global rate limit (``storm``), e.g. for many hosts together.

``StormControl.charge`` is asked for every other datagram the relay reads and drops
(unicasts to the relay, foreign, malformed, forged peer sources...): only step 1 and
the source's own limit, so that a flood of anything trips the breaker (and the
kernel then drops it, see sockfilter) without spending the budgets of the datagrams
that get forwarded.

Both limits are token buckets, kept as GCRA "theoretical arrival times" (one float
per bucket, no per-call allocation).  A source that keeps exceeding its own rate for
``trip_seconds`` trips its breaker: all its datagrams are dropped for
``cutoff_seconds``, then the breaker re-arms and the source starts afresh.

All times are ``now`` arguments from one monotonic clock (``time.monotonic()``).
"""

from __future__ import annotations

import logging
import math
from typing import Any, Callable, Optional

from . import PROG

log = logging.getLogger(PROG)

# Defaults the loop uses (datagrams per second, datagrams, seconds).
PER_SOURCE_RATE = 1000.0
PER_SOURCE_BURST = 2000.0
GLOBAL_RATE = 20000.0
GLOBAL_BURST = 40000.0
CUTOFF_SECONDS = 10.0
TRIP_SECONDS = 1.0
MAX_SOURCES = 4096  # sources tracked at once (~200 bytes each)
SWEEP_INTERVAL = 0.1  # at most this often a full table is searched for idle sources

# Drop reasons (the loop counts them like the classifier's).
DROP_CUT_OFF = "cut_off"
DROP_RATE_LIMITED = "rate_limited"
DROP_STORM = "storm"
DROP_UNVERIFIED = "unverified"  # over the budget that unverified sources share
DROP_REASONS = (DROP_CUT_OFF, DROP_RATE_LIMITED, DROP_STORM, DROP_UNVERIFIED)
REVERIFY_SECONDS = 0.5  # an unverified source is asked about again after this long

# Event kinds given to on_event(kind, src), once per transition.
EVENT_CUT_OFF = "cut_off"
EVENT_RELEASED = "released"

OVERFLOW_SOURCE = "*"  # how the shared bucket of untracked sources shows in status()


class _Source:
    """Per-source state.  ``tat``: theoretical arrival time of the bucket (GCRA);
    ``cut_until``: end of the cutoff, 0.0 when not cut off (monotonic times are > 0);
    ``over_since`` and ``last_over``: first and latest rate-limited datagram of the
    current run (-inf: none)."""

    __slots__ = ("tat", "cut_until", "over_since", "last_over", "shared", "verify_at")

    def __init__(self) -> None:
        self.tat = 0.0
        self.cut_until = 0.0
        self.over_since = -math.inf
        self.last_over = -math.inf
        self.shared: Optional[_Source] = None  # the unverified sources' bucket, or None
        self.verify_at = 0.0  # when to ask whether an unverified source is verified now


EventCallback = Callable[[str, str], None]
VerifyCallback = Callable[[str, float], bool]


class StormControl:
    """Per-source and global rate limits with a breaker (see the module docstring).

    Memory is bounded by ``max_sources``.  When the table is full, idle sources (bucket
    full again, not cut off, not in an over-rate run) are evicted, which loses nothing:
    an evicted source is indistinguishable from a new one.  When no entry is idle (every
    tracked source is busy or cut off, e.g. under a flood from thousands of spoofed
    addresses), sources not in the table share ONE overflow bucket with the per-source
    rate and burst: together they get no more than one source would, so the tracked
    sources lose nothing.  The overflow bucket is rate-limited but never cut off (it
    stands for many hosts, most of them probably innocent).
    """

    __slots__ = (
        "per_source_rate",
        "per_source_burst",
        "global_rate",
        "global_burst",
        "cutoff_seconds",
        "trip_seconds",
        "max_sources",
        "on_event",
        "verify",
        "_interval",
        "_tau",
        "_g_interval",
        "_g_tau",
        "_g_tat",
        "_sources",
        "_overflow",
        "_unverified",
        "_next_sweep",
        "tripped_total",
        "released_total",
        "rate_limited_total",
        "storm_total",
        "overflow_total",
        "evicted_total",
        "unverified_total",
        "charged_total",
    )

    def __init__(
        self,
        per_source_rate: float = PER_SOURCE_RATE,
        per_source_burst: float = PER_SOURCE_BURST,
        global_rate: float = GLOBAL_RATE,
        global_burst: float = GLOBAL_BURST,
        cutoff_seconds: float = CUTOFF_SECONDS,
        trip_seconds: float = TRIP_SECONDS,
        max_sources: int = MAX_SOURCES,
        on_event: Optional[EventCallback] = None,
        verify: Optional[VerifyCallback] = None,
    ):
        for name, value in (
            ("per_source_rate", per_source_rate),
            ("global_rate", global_rate),
        ):
            if not value > 0:  # also refuses NaN; math.inf means "no limit"
                raise ValueError(f"{name} must be > 0, got {value!r}")
        for name, value in (
            ("per_source_burst", per_source_burst),
            ("global_burst", global_burst),
        ):
            if not 0 < value < math.inf:
                raise ValueError(f"{name} must be > 0 and finite, got {value!r}")
        if not 0 < cutoff_seconds < math.inf:
            raise ValueError(f"cutoff_seconds must be > 0 and finite, got {cutoff_seconds!r}")
        if not 0 <= trip_seconds < math.inf:
            raise ValueError(f"trip_seconds must be >= 0 and finite, got {trip_seconds!r}")
        if max_sources < 1:
            raise ValueError(f"max_sources must be >= 1, got {max_sources!r}")
        self.per_source_rate = float(per_source_rate)
        # A bucket smaller than one datagram would pass nothing at all.
        self.per_source_burst = max(float(per_source_burst), 1.0)
        self.global_rate = float(global_rate)
        self.global_burst = max(float(global_burst), 1.0)
        self.cutoff_seconds = float(cutoff_seconds)
        self.trip_seconds = float(trip_seconds)
        self.max_sources = int(max_sources)
        self.on_event = on_event
        self.verify = verify  # None: every source is taken for what it claims
        # GCRA: a datagram conforms if the bucket's theoretical arrival time, advanced
        # by one emission interval, stays within tau of now.  The extra half interval
        # absorbs float rounding, so exactly ``burst`` back-to-back datagrams pass.
        self._interval = 1.0 / self.per_source_rate
        self._tau = (self.per_source_burst + 0.5) * self._interval
        self._g_interval = 1.0 / self.global_rate
        self._g_tau = (self.global_burst + 0.5) * self._g_interval
        self._g_tat = 0.0
        self._sources: dict[str, _Source] = {}
        self._overflow = _Source()
        self._unverified = _Source()
        self._next_sweep = 0.0
        self.tripped_total = 0
        self.released_total = 0
        self.rate_limited_total = 0
        self.storm_total = 0
        self.overflow_total = 0
        self.evicted_total = 0
        self.unverified_total = 0
        self.charged_total = 0

    # -- hot path ---------------------------------------------------------------

    def check(self, src: str, now: float) -> Optional[str]:
        """None: let the datagram through (its buckets are charged); else the drop reason
        ("cut_off", "rate_limited" or "storm")."""
        s = self._sources.get(src)
        if s is None:
            s = self._admit(src, now)
        cut = s.cut_until
        if cut:
            if now < cut:
                return DROP_CUT_OFF
            self._release(src, s)
        # Per-source bucket first: a flooder's excess never reaches the global bucket.
        tat = s.tat
        if tat < now:
            tat = now
        tat += self._interval
        if tat > now + self._tau:
            return self._over(src, s, now)
        shared = s.shared
        if shared is not None:
            if now >= s.verify_at:
                shared = self._reverify(src, s, now)
            if shared is not None:
                s_tat = shared.tat
                if s_tat < now:
                    s_tat = now
                s_tat += self._interval
                if s_tat > now + self._tau:
                    self.unverified_total += 1
                    s.tat = tat  # its own bucket counts it: a lone flooder is cut off
                    return DROP_UNVERIFIED
                shared.tat = s_tat
        g_tat = self._g_tat
        if g_tat < now:
            g_tat = now
        g_tat += self._g_interval
        if g_tat > now + self._g_tau:
            # Not charged to the source: nothing of it got through.
            self.storm_total += 1
            return DROP_STORM
        s.tat = tat
        self._g_tat = g_tat
        return None

    def charge(self, src: str, now: float) -> Optional[str]:
        """A datagram of ``src`` the relay drops anyway: None, or "cut_off" or
        "rate_limited" when the source is over its own rate (which trips its
        breaker).  No shared or global budget is spent on it.  (Its first steps are
        check's, written out again: check is the hot path, and a call costs.)"""
        s = self._sources.get(src)
        if s is None:
            s = self._admit(src, now)
        cut = s.cut_until
        if cut:
            if now < cut:
                return DROP_CUT_OFF
            self._release(src, s)
        self.charged_total += 1
        tat = s.tat
        if tat < now:
            tat = now
        tat += self._interval
        if tat > now + self._tau:
            return self._over(src, s, now)
        s.tat = tat
        return None

    # -- slow paths -------------------------------------------------------------

    def _reverify(self, src: str, s: _Source, now: float) -> Optional[_Source]:
        s.verify_at = now + REVERIFY_SECONDS
        if self._verified(src, now):
            s.shared = None
        return s.shared

    def _verified(self, src: str, now: float) -> bool:
        verify = self.verify
        if verify is None:
            return True
        try:
            return verify(src, now)
        except Exception:
            log.exception("storm control: verify(%r) failed", src)
            return False

    def _over(self, src: str, s: _Source, now: float) -> str:
        """A datagram over the source's own rate; trips the breaker on a long run.

        Each rate-limited datagram finds the source's bucket empty.  Rate-limited
        datagrams at most trip_seconds apart form a run: the bucket is empty again
        within trip_seconds each time, so a run lasting trip_seconds means the source
        kept sending faster than its rate all along.  A one-off burst empties the
        bucket once, which is a short run: rate-limited, never cut off.
        """
        self.rate_limited_total += 1
        if s is self._overflow:
            return DROP_RATE_LIMITED
        if now - s.last_over > self.trip_seconds:
            s.over_since = now  # a new run
        s.last_over = now
        if now - s.over_since < self.trip_seconds:
            return DROP_RATE_LIMITED
        s.cut_until = now + self.cutoff_seconds
        s.over_since = s.last_over = -math.inf
        self.tripped_total += 1
        self._event(EVENT_CUT_OFF, src)
        return DROP_CUT_OFF

    def _release(self, src: str, s: _Source) -> None:
        s.cut_until = 0.0
        s.over_since = s.last_over = -math.inf  # re-armed: it must exceed for trip_seconds again
        self.released_total += 1
        self._event(EVENT_RELEASED, src)

    def _event(self, kind: str, src: str) -> None:
        callback = self.on_event
        if callback is None:
            return
        try:
            callback(kind, src)
        except Exception:
            # A failing logger must not break forwarding of the datagram at hand.
            log.exception("storm control: on_event(%r, %r) failed", kind, src)

    def _admit(self, src: str, now: float) -> _Source:
        """The entry of a source seen for the first time (or the shared overflow one)."""
        sources = self._sources
        if len(sources) >= self.max_sources:
            if now >= self._next_sweep:
                self._next_sweep = now + SWEEP_INTERVAL
                self._sweep(now)
            if len(sources) >= self.max_sources:
                self.overflow_total += 1
                return self._overflow
        s = _Source()
        if not self._verified(src, now):
            s.shared = self._unverified
            s.verify_at = now + REVERIFY_SECONDS
        sources[src] = s
        return s

    def _idle(self, s: _Source, now: float) -> bool:
        return s.tat <= now and not s.cut_until and now - s.last_over > self.trip_seconds

    def _sweep(self, now: float) -> None:
        """Release ended cutoffs, then forget the idle sources."""
        sources = self._sources
        for src, s in list(sources.items()):
            if s.cut_until and now >= s.cut_until:
                self._release(src, s)
            if self._idle(s, now):
                del sources[src]
                self.evicted_total += 1

    def expire(self, now: float) -> None:
        """Release the sources whose cutoff ended and forget idle ones.

        A cut-off source is also released at its first datagram after the cutoff; call
        this periodically (e.g. with the status file) so that a source that went quiet
        is reported released too, and memory shrinks after a burst of sources.
        """
        self._sweep(now)

    # -- status -----------------------------------------------------------------

    def cut_off(self, now: float) -> dict[str, float]:
        """Cut-off sources and the seconds left until their release."""
        cut = [(src, s.cut_until) for src, s in self._sources.items() if s.cut_until > now]
        return {src: round(until - now, 1) for src, until in sorted(cut)}

    def status(self, now: float) -> dict[str, Any]:
        """For the status file.  Releases ended cutoffs first (see ``expire``)."""
        self.expire(now)
        return {
            "per_source_rate": self.per_source_rate,
            "per_source_burst": self.per_source_burst,
            "global_rate": self.global_rate,
            "global_burst": self.global_burst,
            "cutoff_seconds": self.cutoff_seconds,
            "trip_seconds": self.trip_seconds,
            "max_sources": self.max_sources,
            "sources": len(self._sources),
            "cut_off": self.cut_off(now),
            "tripped_total": self.tripped_total,
            "released_total": self.released_total,
            "rate_limited_total": self.rate_limited_total,
            "storm_total": self.storm_total,
            "overflow_total": self.overflow_total,
            "evicted_total": self.evicted_total,
            "unverified_sources": sum(1 for s in self._sources.values() if s.shared is not None),
            "unverified_total": self.unverified_total,
            "charged_total": self.charged_total,  # dropped datagrams counted per source
        }
