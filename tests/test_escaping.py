"""Names and user input echoed into FTP replies and log lines."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from cosgw.escaping import for_log, for_reply


class ReplyTests(SynchronousTestCase):
    def test_plain_text_unchanged(self) -> None:
        self.assertEqual(
            for_reply("Bericht 2026 – 报告.pdf"), "Bericht 2026 – 报告.pdf"
        )

    def test_line_breaks_cannot_forge_a_reply(self) -> None:
        text = for_reply("evil\r\n226 Transfer complete\r\nx")
        self.assertEqual(text, "evil??226 Transfer complete??x")
        self.assertNotIn("\n", text)

    def test_every_control_character(self) -> None:
        self.assertEqual(for_reply("a\x00b\tc\x1bd\x7fe"), "a?b?c?d?e")


class LogTests(SynchronousTestCase):
    def test_plain_text_unchanged(self) -> None:
        self.assertEqual(for_log("alice@example"), "alice@example")

    def test_newline_cannot_forge_a_line(self) -> None:
        forged = "bob\n2026-12-06 login failed for root from 203.0.113.9"
        text = for_log(forged)
        self.assertEqual(text.count("\n"), 0)
        self.assertEqual(
            text, "bob\\n2026-12-06 login failed for root from 203.0.113.9"
        )

    def test_escapes_are_unambiguous(self) -> None:
        """A literal backslash-n and a newline stay distinguishable."""
        self.assertEqual(for_log("a\\nb"), "a\\\\nb")
        self.assertEqual(for_log("a\nb"), "a\\nb")
        self.assertEqual(for_log("\r\t\x00\x7f"), "\\r\\t\\x00\\x7f")
