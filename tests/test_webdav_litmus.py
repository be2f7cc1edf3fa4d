"""
The litmus WebDAV conformance suite (Debian's litmus 0.13) against a real
listener over the COS test store: its basic, copymove, props, locks and
http (Expect: 100-continue) groups must all pass, with no warning.
"""

from __future__ import annotations

import re
from typing import Any

from twisted.internet import defer

from tests.davtesting import DAVCase
from tests.harness import PASSWORD

GROUPS = ("basic", "copymove", "props", "locks", "http")
_SUMMARY = re.compile(
    r"<- summary for `(\w+)': of (\d+) tests run: (\d+) passed, (\d+) failed"
)


class LitmusTests(DAVCase):
    timeout = 300

    @defer.inlineCallbacks
    def test_litmus_groups_pass_on_cos(self) -> Any:
        yield self.start("cos")
        done = yield self.run_tool(
            ["litmus", f"{self.url}/", "alice", PASSWORD],
            timeout=240,
            env={"TESTS": " ".join(GROUPS)},
        )
        output = done.stdout + done.stderr
        summaries = {m[0]: m[1:] for m in _SUMMARY.findall(output)}
        self.assertEqual(sorted(summaries), sorted(GROUPS), output)
        for group, (run, passed, failed) in summaries.items():
            self.assertEqual((failed, passed), ("0", run), f"{group}:\n{output}")
        self.assertNotIn("WARNING", output)
        self.assertEqual(done.returncode, 0, output)
        # Every upload it made was completed: no multipart upload is left.
        self.assertEqual(self.gw.inspector.pending_uploads(), [])
        # The last group (http) began with a fresh, empty collection.
        self.assertEqual(self.gw.inspector.keys("litmus/"), ["litmus/"])
