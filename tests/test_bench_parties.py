"""
The arithmetic the issue-11 benchmarks state their ceilings with
(bench/_parties.py, bench/_small_budget.py, bench/_ceilings.py), and the
small-files bench's --store-latency knob against the real fake COS server.
The benchmarks' figures themselves are measured in bench/, never here.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable

from twisted.trial.unittest import SynchronousTestCase

from bench._ceilings import CORES, CpuRow, print_reach
from bench._parties import CpuMeter, PartyCpu, median_parties, scaled
from bench._small_budget import budget_of, print_budget
from bench.small_files import Contender, Run, hold_requests
from tests.cosserver import shared_server


def _burn(seconds: float) -> None:
    """Use C{seconds} of this thread's CPU (bounded by five times as long)."""
    start, deadline = time.thread_time(), time.monotonic() + 5 * seconds + 5
    while time.thread_time() - start < seconds and time.monotonic() < deadline:
        sum(range(1000))


def _printed(f: Callable[..., object], *args: object) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        f(*args)
    return out.getvalue()


def _unused(directory: str) -> Run:
    raise AssertionError("not run")


def _contender(label: str, runs: list[Run], client: str = "ftplib") -> Contender:
    contender = Contender(label, _unused, _unused, client=client)
    contender.runs["up"] = runs
    return contender


class PartyCpuTests(SynchronousTestCase):
    def test_total_counts_the_reactor_once(self) -> None:
        """The reactor is a thread of the server: the total adds it no more."""
        self.assertEqual(PartyCpu(1.0, 2.0, 1.5, 0.5).total(), 3.5)
        self.assertEqual(PartyCpu(1.0, None, None, 0.5).total(), 1.5)

    def test_minus_keeps_missing_parties_missing(self) -> None:
        less = PartyCpu(3.0, 5.0, None, 2.0).minus(PartyCpu(1.0, 1.0, None, 0.5))
        self.assertEqual(less, PartyCpu(2.0, 4.0, None, 1.5))

    def test_median_and_scale_per_party(self) -> None:
        rounds = [PartyCpu(1.0, 4.0, 2.0, 3.0), PartyCpu(3.0, 2.0, 1.0, 1.0)]
        rounds.append(PartyCpu(2.0, 3.0, 5.0, 2.0))
        middle = median_parties(rounds)
        self.assertEqual(middle, PartyCpu(2.0, 3.0, 2.0, 2.0))
        assert middle is not None
        self.assertEqual(scaled(middle, 0.5), PartyCpu(1.0, 1.5, 1.0, 1.0))
        self.assertIsNone(median_parties([]))


class CpuMeterTests(SynchronousTestCase):
    def test_this_process_and_its_main_thread(self) -> None:
        """
        With this process as client, server and store, CPU burnt on its
        main thread (whose id is the PID, as twistd's reactor thread)
        shows as client, server and reactor CPU alike.
        """
        pid = os.getpid()
        meter = CpuMeter(store=pid, server=pid, reactor=True)
        meter.start()
        _burn(0.3)
        used = meter.stop()
        self.assertGreaterEqual(used.client, 0.25)
        for party in (used.server, used.reactor, used.store):
            assert party is not None
            self.assertGreaterEqual(party, 0.25)
            self.assertLess(party, used.client + 0.5)

    def test_a_reaped_child_client(self) -> None:
        """A child client's CPU counts once reaped; this process's does not."""
        meter = CpuMeter(store=os.getpid(), child=True)
        meter.start()
        burn = (
            "import time\nstart = time.process_time()\n"
            "while time.process_time() - start < 0.3: sum(range(1000))"
        )
        subprocess.run([sys.executable, "-c", burn], check=True, timeout=60)
        used = meter.stop()
        self.assertGreaterEqual(used.client, 0.3)
        self.assertIsNone(used.server)
        self.assertIsNone(used.reactor)


class SmallBudgetTests(SynchronousTestCase):
    """One file = 1 ms: figures chosen so each printed cell is known."""

    def setUp(self) -> None:
        one = Counter({"PutObject": 1000})
        self.sdk = _contender(
            "SDK", [Run(12.0, one, PartyCpu(1.0, None, None, 1.0))], "the SDK"
        )
        two = Counter({"HeadObject": 1000, "PutObject": 1000})
        self.gateway = _contender(
            "cosgw SFTP", [Run(25.0, two, PartyCpu(0.5, 2.0, 1.0, 2.0))]
        )

    def test_budget_per_file(self) -> None:
        budget = budget_of(self.gateway, "up", 1000)
        assert budget is not None
        self.assertEqual(
            (budget.client, budget.server, budget.reactor, budget.store),
            (0.5, 2.0, 1.0, 2.0),
        )
        self.assertEqual((budget.cpu, budget.wall, budget.requests), (4.5, 25.0, 2.0))
        self.assertEqual(budget.model(10), 24.5)
        self.assertIsNone(budget_of(self.gateway, "down", 1000))

    def test_model_against_measured(self) -> None:
        """
        At 10 ms a request the SDK's model is 2 + 10 = 12 ms, the gateway's
        4.5 + 20 = 24.5: 0.49x predicted, 12/25 = 0.48x measured; for 0.8x
        the server may use 12 / 0.8 - (0.5 + 2 + 20), less than nothing.
        """
        text = _printed(print_budget, [self.sdk, self.gateway], 1000, 10.0)
        row = next(line for line in text.splitlines() if "24.50" in line)
        self.assertEqual(row.split()[3:7], ["24.50", "25.00", "0.49x", "0.48x"])
        self.assertIn("nothing: client + store + latency alone exceed 15.00", row)
        budget = next(line for line in text.splitlines() if "20.50" in line)
        # client, server, (reactor), store, CPU sum, wall, remainder, req/file
        self.assertEqual(
            budget.split()[3:],
            ["0.50", "2.00", "1.00", "2.00", "4.50", "25.00", "20.50", "2.00"],
        )

    def test_allowance(self) -> None:
        """
        Without latency, 0.8x the SDK's 2 ms leaves a one-request contender
        whose client and store take 1.25 ms another 1.25 ms of server CPU.
        """
        one = Counter({"PutObject": 1000})
        ftp = _contender("cosgw FTP", [Run(4.0, one, PartyCpu(0.25, 2.0, 1.0, 1.0))])
        text = _printed(print_budget, [self.sdk, ftp], 1000, 0.0)
        self.assertIn("<= 1.25 ms/file (uses 2.00)", text)


class CeilingTests(SynchronousTestCase):
    def test_bounds(self) -> None:
        """CORES / total and 1 / reactor, the lower of the two binding."""
        row = CpuRow("SFTP", "down", PartyCpu(1.0, 2.0, 1.6, 1.0), 300.0)
        self.assertAlmostEqual(row.cores_bound(), CORES * 1000 / 4.0)
        self.assertAlmostEqual(row.reactor_bound() or 0, 625.0)
        self.assertAlmostEqual(row.bound(), min(CORES * 250.0, 625.0))
        self.assertIsNone(
            CpuRow("SDK", "up", PartyCpu(1, None, None, 1), 1).reactor_bound()
        )

    def test_reach_against_ftp(self) -> None:
        """
        0.8x FTP's 500 MB/s is 400 MB/s: CORES / 0.4 s/GB in total, and at
        FTP's share of its bound its total (2.0) / 0.8 = 2.5 s/GB.
        """
        ftp = CpuRow("FTP", "down", PartyCpu(0.5, 1.0, 0.5, 0.5), 500.0)
        sftp = CpuRow("SFTP", "down", PartyCpu(1.5, 2.0, 1.8, 0.5), 250.0)
        text = _printed(print_reach, sftp, ftp)
        ratio = sftp.bound() / ftp.bound()
        self.assertIn(f"{ratio:.2f}x predicted, 0.50x measured", text)
        self.assertIn(f"<= {CORES * 2.5:.2f} s/GB in total, or <= 2.50", text)
        self.assertIn(f"gateway <= {CORES * 2.5 - 2.0:.2f} or 0.50 (now 2.00)", text)
        self.assertIn("its reactor <= 2.50 (now 1.80)", text)


class StoreLatencyTests(SynchronousTestCase):
    def test_every_request_is_held(self) -> None:
        """
        --store-latency arms one endless delay for every COS operation: each
        of three SDK requests is held (the fault counts its strikes) and
        takes at least the latency.
        """
        server = shared_server()
        server.reset_faults()
        self.addCleanup(server.reset_faults)
        bucket = server.create_bucket("latency")
        client = server.cos_client()
        args = argparse.Namespace(store_latency=60.0, no_rclone=True)
        said = _printed(hold_requests, server, args)
        self.assertIn("every COS request held 60 ms", said)
        start = time.monotonic()
        client.put_object(Bucket=bucket, Key="a", Body=b"x")
        client.head_object(Bucket=bucket, Key="a")
        client.get_object(Bucket=bucket, Key="a")["Body"].get_raw_stream().read()
        elapsed = time.monotonic() - start
        (fault,) = server.faults()
        self.assertEqual((fault["kind"], fault["op"], fault["hits"]), ("delay", "*", 3))
        self.assertGreaterEqual(elapsed, 0.18)

    def test_none_by_default(self) -> None:
        server = shared_server()
        server.reset_faults()
        args = argparse.Namespace(store_latency=0.0, no_rclone=True)
        self.assertIn("none added", _printed(hold_requests, server, args))
        self.assertEqual(server.faults(), [])
