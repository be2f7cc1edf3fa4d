"""
The audit events of the file system's actions (delete, rename, mkdir,
rmdir, mtime, list, resume): one per action, emitted below the protocols
once the store answered, with the outcome and the status the session's
frontend maps it to, the user's paths as the client sees them; and the
session a login hands the file system (L{Accounts.session}).  The
transfers' records are in test_audit_transfers.
"""

from __future__ import annotations

from dataclasses import replace

from twisted.internet.address import IPv4Address

from cosgw import vfs
from cosgw.config import ALL_PERMISSIONS
from cosgw.interfaces import MAX_LIST_KEYS
from cosgw.policy.accounts import LoginRefused
from tests.audittesting import AuditTestCase, H, MiB
from tests.transfertesting import FakeProducer


def p(path: str) -> list[str]:
    return vfs.resolve([], path)


class LoginTests(AuditTestCase):
    def test_session_is_the_users(self) -> None:
        """
        A login with the client's session as the mind makes it the user's
        and gives it to the file system, which emits its events.
        """
        self.assertEqual(self.session.user, "alice")
        self.assertIs(self.fs.session, self.session)
        self.ok(self.fs.mkdir(p("/d")))
        self.one("mkdir", path="/d", outcome="ok")

    def test_address_or_nothing(self) -> None:
        """An address (or None) as the mind: a file system that records nothing."""
        for mind in (IPv4Address("TCP", "192.0.2.8", 1), None):
            fs, logout = self.accounts.session("alice", mind)
            self.assertIsNone(fs.session)
            self.ok(fs.mkdir(p(f"/{id(mind)}")))
            logout()
        self.assertEqual(self.events(), [])

    def test_refused_login_leaves_session_anonymous(self) -> None:
        """A session a rule refuses is not the user's."""
        self.accounts.accounts["alice"] = replace(
            self.accounts.accounts["alice"], max_sessions=1
        )
        other = self.table.open("ftp", "192.0.2.9", 2, self.kicks.append)
        self.assertRaises(LoginRefused, self.accounts.session, "alice", other)
        self.assertEqual(other.user, "")


class ActionTests(AuditTestCase):
    def test_delete(self) -> None:
        self.put("dir/a.txt", b"abc")
        self.ok(self.fs.remove(p("/dir/a.txt")))
        event = self.one("delete", path="/dir/a.txt", outcome="ok", status="ok")
        self.assertNotIn("error", event)

    def test_delete_missing(self) -> None:
        """A failed action is an event too, with its error and status."""
        self.fails(self.fs.remove(p("/nothing")), vfs.NotFound)
        event = self.one("delete", path="/nothing", outcome="error", status="NotFound")
        self.assertEqual(event["error"], "/nothing: no such file or directory")

    def test_refused_at_once(self) -> None:
        """A permission refused before any request: still one event."""
        fs = self.login(permissions=ALL_PERMISSIONS - {"delete", "mkdir"})
        self.put("a")
        self.assertRaises(vfs.PermissionDenied, fs.remove, p("/a"))
        self.assertRaises(vfs.PermissionDenied, fs.mkdir, p("/d"))
        self.assertEqual(
            [(e["event"], e["path"], e["status"]) for e in self.events()],
            [
                ("delete", "/a", "PermissionDenied"),
                ("mkdir", "/d", "PermissionDenied"),
            ],
        )
        self.assertEqual(self.store.stored_keys(H), [H + "a"])

    def test_rename_file(self) -> None:
        self.put("a", b"1")
        self.put("d/")
        self.ok(self.fs.rename(p("/a"), p("/d/b")))
        self.one("rename", path="/a", path_to="/d/b", outcome="ok")

    def test_rename_directory(self) -> None:
        """A directory's rename is one event, however many keys it moves."""
        for name in ("x/", "x/1", "x/2", "x/y/3"):
            self.put(name, b"z")
        self.ok(self.fs.rename(p("/x"), p("/w")))
        self.one("rename", path="/x", path_to="/w", outcome="ok")
        self.assertEqual(len(self.store.stored_keys(H + "w/")), 4)

    def test_rename_failed(self) -> None:
        self.put("a")
        self.put("d/")
        self.fails(self.fs.rename(p("/a"), p("/d")), vfs.IsADirectory)
        self.one("rename", path="/a", path_to="/d", status="IsADirectory")

    def test_rename_without_replacing(self) -> None:
        """
        SFTP's RENAME onto an existing file: refused by the rename's own
        checks (no stat first), and that refusal is the rename's event.
        """
        self.put("a", b"1")
        self.put("b", b"2")
        self.fails(self.fs.rename(p("/a"), p("/b"), replace=False), vfs.AlreadyExists)
        self.one("rename", path="/a", path_to="/b", status="AlreadyExists")
        self.assertEqual(self.store.stored_bytes(H + "b"), b"2")
        self.assertEqual(self.store.requests["copy"], 0)
        self.ok(self.fs.rename(p("/a"), p("/a"), replace=False))
        self.ok(self.fs.rename(p("/a"), p("/c"), replace=False))
        self.assertEqual(self.store.stored_bytes(H + "c"), b"1")

    def test_mkdir_rmdir(self) -> None:
        self.ok(self.fs.mkdir(p("/new")))
        self.fails(self.fs.mkdir(p("/new")), vfs.AlreadyExists)
        self.put("full/f")
        self.fails(self.fs.rmdir(p("/full")), vfs.NotEmpty)
        self.ok(self.fs.rmdir(p("/new")))
        self.assertEqual(
            [(e["event"], e["path"], e["outcome"], e["status"]) for e in self.events()],
            [
                ("mkdir", "/new", "ok", "ok"),
                ("mkdir", "/new", "error", "AlreadyExists"),
                ("rmdir", "/full", "error", "NotEmpty"),
                ("rmdir", "/new", "ok", "ok"),
            ],
        )

    def test_mtime(self) -> None:
        """MFMT; a failed one (a directory) too."""
        self.put("f", b"x")
        self.put("d/")
        self.ok(self.fs.set_mtime(p("/f"), 1_600_000_000.0))
        self.fails(self.fs.set_mtime(p("/d"), 1_600_000_000.0), vfs.IsADirectory)
        self.assertEqual(
            [(e["event"], e["path"], e["outcome"]) for e in self.events()],
            [("mtime", "/f", "ok"), ("mtime", "/d", "error")],
        )

    def test_setstat_time(self) -> None:
        """SFTP's SETSTAT with a time: one mtime event, whatever it needs."""
        self.put("f", b"x")
        self.ok(self.fs.set_attributes(p("/f"), mtime=1_600_000_000.0))
        self.one("mtime", path="/f", outcome="ok")
        self.forget_events()
        self.fails(self.fs.set_attributes(p("/f"), size=5, mtime=1.0), vfs.NotSupported)
        self.one("mtime", path="/f", status="NotSupported")
        self.forget_events()
        # Only permissions (no size, no time): not an action on the file.
        self.ok(self.fs.set_attributes(p("/f")))
        self.assertEqual(self.events(), [])

    def test_paths_are_the_clients(self) -> None:
        """Paths from the home, never the key or the home's prefix."""
        self.put("a b/")
        self.ok(self.fs.mkdir(["a b", "\u00e9t\u00e9"]))
        self.one("mkdir", path="/a b/\u00e9t\u00e9")
        self.assertEqual(
            self.store.stored_keys(H + "a b/\u00e9"), [H + "a b/\u00e9t\u00e9/"]
        )


class ListingTests(AuditTestCase):
    def pages(self, listing: vfs.Listing) -> list[str]:
        names: list[str] = []
        while (page := self.ok(listing.next_page())) is not None:
            names.extend(e.name for e in page)
        return names

    def test_one_per_listing(self) -> None:
        """One event when the listing ends, with its number of entries."""
        for name in ("d/a", "d/b", "d/sub/c"):
            self.put(name)
        listing = self.fs.listing(p("/d"))
        self.assertEqual(self.pages(listing), ["a", "b", "sub"])
        listing.close()  # after the end: nothing more
        self.one("list", path="/d", entries=3, outcome="ok")

    def test_many_pages(self) -> None:
        """A listing of several store pages is still one event."""
        count = MAX_LIST_KEYS + 5
        for i in range(count):
            self.successResultOf(self.store.put(f"{H}big/{i:05d}", b""))
        listing = self.fs.listing(p("/big"))
        self.assertEqual(len(self.pages(listing)), count)
        self.one("list", path="/big", entries=count)

    def test_missing(self) -> None:
        self.fails(self.fs.listing(p("/none")).next_page(), vfs.NotFound)
        self.one("list", path="/none", entries=0, status="NotFound")

    def test_refused(self) -> None:
        fs = self.login(permissions=ALL_PERMISSIONS - {"list"})
        self.assertRaises(vfs.PermissionDenied, fs.listing, p("/"))
        self.one("list", path="/", status="PermissionDenied")

    def test_closed_early(self) -> None:
        """
        A listing the frontend stops reading (its client went) is one
        event that says so; closing it again changes nothing.
        """
        self.put("d/a")
        listing = self.fs.listing(p("/d"))
        self.assertEqual([e.name for e in self.ok(listing.next_page()) or []], ["a"])
        listing.close(ConnectionError("data connection lost"))
        listing.close()
        event = self.one("list", path="/d", entries=1, outcome="error")
        self.assertEqual(event["status"], "ConnectionError")

    def test_list_all(self) -> None:
        self.put("f")
        self.assertEqual([e.name for e in self.ok(self.fs.list_all(p("/")))], ["f"])
        self.one("list", path="/", entries=1)


class ResumeTests(AuditTestCase):
    def test_resume(self) -> None:
        """
        An upload that resumes a kept one: a resume event with the path and
        the offset, before the upload's own.
        """
        data = bytes(range(256)) * (12 * 1024)  # 3 MiB
        upload = self.ok(self.fs.open_upload(p("/big.bin")))
        upload.registerProducer(FakeProducer(), True)
        upload.write(data[: 2 * MiB + 100])
        kept = self.ok(upload.interrupt())
        self.assertEqual(kept, 2 * MiB)
        self.forget_events()
        upload = self.ok(self.fs.open_upload(p("/big.bin"), offset=kept))
        self.one("resume", path="/big.bin", offset=2 * MiB, outcome="ok")
        upload.registerProducer(FakeProducer(), True)
        upload.write(data[kept:])
        self.ok(upload.commit())
        self.assertEqual(self.store.stored_bytes(H + "big.bin"), data)
        resume, stored = self.events()
        self.assertEqual(
            (stored["event"], stored["offset"], stored["bytes"]),
            ("upload", 2 * MiB, MiB),
        )

    def test_no_resume(self) -> None:
        """An upload from 0 discards a kept one: no resume event."""
        upload = self.ok(self.fs.open_upload(p("/f")))
        upload.registerProducer(FakeProducer(), True)
        upload.write(b"x" * (MiB + 1))
        self.ok(upload.interrupt())
        self.forget_events()
        upload = self.ok(self.fs.open_upload(p("/f")))
        self.assertEqual(self.events(), [])
        self.ok(upload.abort())
