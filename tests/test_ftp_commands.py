"""
FTP commands beyond the basics, end to end against a real gateway and a real
store (a local directory, and the test COS server), with Python's ftplib:

  - FEAT (RFC 2389), MLSD/MLST and OPTS MLST (RFC 3659 section 7), MFMT and
    MDTM (draft-somers-ftp-mfxx, RFC 3659 section 3);
  - HASH, OPTS HASH and RANG (draft-bryan-ftpext-hash), the XCRC, XMD5,
    XSHA1 and XSHA256 digests, SITE HELP, CHMOD and CRC64;
  - HELP, ALLO, CLNT, the X* directory aliases (RFC 1123 4.1.3.1), STOU
    (RFC 1123 4.1.2.9), STAT (RFC 959);
  - renaming a directory tree;
  - data-connection hijacking (RFC 2577: port stealing, bounce) and IPv6
    (RFC 2428: EPSV, EPRT, PASV's 522).

Every check is on what the client sees (reply codes and texts) and on what
the store really holds (keys, bytes and digests read directly).
"""

from __future__ import annotations

import calendar
import dataclasses
import ftplib
import hashlib
import io
import re
import socket
import time
import zlib
from collections.abc import Callable
from typing import Any, Optional

from twisted.internet import defer
from twisted.trial import unittest

from cosgw.storage.checksum import crc64
from tests.harness import (
    PASSWORD,
    READER_PASSWORD,
    MiB,
    in_thread,
    random_bytes,
    sha256,
    start_gateway,
)

#: FEAT's lines for a new session (RFC 2389: one feature a line, each line
#: starting with a single space).  "RANG STREAM" is how draft-bryan-ftpext-
#: hash section 4 has a server announce RANG.
FEATURES = [
    "AUTH TLS",
    "CLNT",
    "EPRT",
    "EPSV",
    "HASH SHA-256*;SHA-512;SHA-1;MD5;CRC32",
    "MDTM",
    "MFMT",
    "MLST type*;size*;modify*;perm*;unique*;UNIX.mode;COS.crc64;",
    "PASV",
    "PBSZ",
    "PROT",
    "RANG STREAM",
    "REST STREAM",
    "SIZE",
    "TVFS",
    "TYPE A;I",
    "UTF8",
]

#: RFC 3659 section 7.5.5 perm letters for a user with every permission
#: (alice) and for one with list + download (reader).
ALICE_FILE_PERM, ALICE_DIR_PERM = "adfrw", "cdeflmp"
READER_FILE_PERM, READER_DIR_PERM = "r", "el"

#: An MLSD line or MLST's fact line (RFC 3659 7.2): facts "name=value;",
#: one space, then the name (which may hold spaces).
FACT_LINE = re.compile(r"^((?:[A-Za-z0-9.\-]+=[^; ]*;)+) (.+)$")

#: A UTF-8 name with a space in it.
UTF8_NAME = "日本語 ファイル.txt"


# -- client helpers -----------------------------------------------------------


def connect(
    gw: Any, user: str = "alice", password: str = PASSWORD, host: str = ""
) -> ftplib.FTP:
    ftp = ftplib.FTP(encoding="utf-8")
    ftp.connect(host or gw.host, gw.port, timeout=20)
    ftp.login(user, password)
    ftp.voidcmd("TYPE I")
    return ftp


def session(gw: Any, work: Callable[[ftplib.FTP], Any], **kwargs: Any) -> Any:
    """Run C{work} with a logged-in client; blocking, for L{in_thread}."""
    ftp = connect(gw, **kwargs)
    try:
        return work(ftp)
    finally:
        ftp.close()


def attempt(ftp: ftplib.FTP, line: str) -> str:
    """The reply to C{line}, error or not (multi-line replies joined by \\n)."""
    try:
        return ftp.sendcmd(line)
    except ftplib.Error as e:
        return str(e)


def put(ftp: ftplib.FTP, name: str, data: bytes) -> str:
    return ftp.storbinary(f"STOR {name}", io.BytesIO(data))


def get(ftp: ftplib.FTP, name: str) -> bytes:
    out = io.BytesIO()
    ftp.retrbinary(f"RETR {name}", out.write)
    return out.getvalue()


def retrlines(ftp: ftplib.FTP, command: str) -> list[str]:
    lines: list[str] = []
    ftp.retrlines(command, lines.append)
    return lines


def transfer_error(ftp: ftplib.FTP, command: str) -> str:
    """The reply of a transfer command expected to be refused."""
    try:
        ftp.retrlines(command, lambda line: None)
    except ftplib.Error as e:
        return str(e)
    return "no error"


def parse_facts(line: str) -> tuple[dict[str, str], str]:
    """An RFC 3659 fact line: ({fact: value}, name); fails if malformed."""
    m = FACT_LINE.match(line)
    if m is None:
        raise AssertionError(f"not an RFC 3659 fact line: {line!r}")
    facts = {}
    for item in m.group(1).split(";")[:-1]:
        name, _, value = item.partition("=")
        facts[name] = value
    return facts, m.group(2)


def parse_mlst(reply: str) -> tuple[list[str], dict[str, str], str]:
    """MLST's reply: (its lines, the facts, the path)."""
    lines = reply.split("\n")
    if len(lines) != 3:
        raise AssertionError(f"MLST reply is not 3 lines: {reply!r}")
    if not lines[1].startswith(" ") or lines[1].startswith("  "):
        raise AssertionError(f"MLST fact line must start with one space: {reply!r}")
    facts, path = parse_facts(lines[1][1:])
    return lines, facts, path


def epoch(stamp: str) -> float:
    """An RFC 3659 time-val (UTC) as epoch seconds."""
    return calendar.timegm(time.strptime(stamp, "%Y%m%d%H%M%S"))


def passive_port(ftp: ftplib.FTP) -> int:
    """Send PASV and return the port it announces."""
    reply = ftp.sendcmd("PASV")
    m = re.search(r"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", reply)
    if m is None or not reply.startswith("227 "):
        raise AssertionError(f"bad PASV reply {reply!r}")
    return int(m.group(5)) * 256 + int(m.group(6))


def read_all(conn: socket.socket) -> bytes:
    chunks = []
    while True:
        block = conn.recv(65536)
        if not block:
            return b"".join(chunks)
        chunks.append(block)


def _ipv6_missing() -> Optional[str]:
    """Why this machine cannot run the IPv6 tests, or None if it can."""
    if not socket.has_ipv6:
        return "Python was built without IPv6 support (socket.has_ipv6 is False)"
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
    except OSError as e:
        return f"the loopback address ::1 cannot be bound here: {e}"
    return None


# -- the tests ----------------------------------------------------------------


class CommandTestsMixin:
    kind = "local"

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        self.gw = yield start_gateway(self, self.kind)

    def run_session(self, work: Callable[[ftplib.FTP], Any], **kwargs: Any) -> Any:
        return in_thread(session, self.gw, work, **kwargs)

    def keys(self, prefix: str = "") -> list[str]:
        return self.gw.inspector.keys(prefix)

    def file_keys(self, prefix: str = "") -> list[str]:
        """Keys of files only (directory markers differ between stores)."""
        return [k for k in self.keys(prefix) if not k.endswith("/")]

    # -- FEAT -----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_feat_lists_every_feature(self) -> Any:
        def run() -> tuple[str, str, str]:
            ftp = ftplib.FTP(encoding="utf-8")
            ftp.connect(self.gw.host, self.gw.port, timeout=20)
            before = ftp.sendcmd("FEAT")  # FEAT works before login
            ftp.login("alice", PASSWORD)
            after = ftp.sendcmd("FEAT")
            utf8 = attempt(ftp, "OPTS UTF8 ON")
            ftp.quit()
            return before, after, utf8

        before, after, utf8 = yield in_thread(run)
        for reply in (before, after):
            lines = reply.split("\n")
            self.assertEqual(lines[0], "211-Features:")
            self.assertEqual(lines[-1], "211 End")
            for line in lines[1:-1]:
                self.assertTrue(
                    line.startswith(" ") and not line.startswith("  "), line
                )
            self.assertEqual([line[1:] for line in lines[1:-1]], FEATURES)
        self.assertTrue(utf8.startswith("200 "), utf8)

    # -- MLSD / MLST ----------------------------------------------------------

    def make_tree(self, ftp: ftplib.FTP) -> dict[str, bytes]:
        """d/ with three files and two subdirectories (one non-empty)."""
        files = {
            "a.bin": random_bytes(1000),
            UTF8_NAME: "こんにちは".encode(),
            "empty.txt": b"",
        }
        ftp.mkd("d")
        for name, data in files.items():
            put(ftp, f"d/{name}", data)
        ftp.mkd("d/sub1")
        ftp.mkd("d/sub2")
        put(ftp, "d/sub2/inner.txt", b"inner")
        return files

    @defer.inlineCallbacks
    def test_mlsd_directory(self) -> Any:
        def run(ftp: ftplib.FTP) -> dict[str, Any]:
            r: dict[str, Any] = {"files": self.make_tree(ftp)}
            r["mlsd"] = retrlines(ftp, "MLSD d")
            ftp.cwd("d")
            r["mlsd_cwd"] = retrlines(ftp, "MLSD")
            ftp.cwd("/")
            r["mlsd_file"] = transfer_error(ftp, "MLSD d/a.bin")
            r["mlsd_missing"] = transfer_error(ftp, "MLSD nowhere")
            r["noop"] = ftp.sendcmd("NOOP")
            r["mlst"] = {
                name: ftp.sendcmd(f"MLST d/{name}")
                for name in ("a.bin", UTF8_NAME, "empty.txt", "sub1", "sub2")
            }
            r["mlst_missing"] = attempt(ftp, "MLST d/nowhere")
            return r

        def as_reader(ftp: ftplib.FTP) -> list[str]:
            return retrlines(ftp, "MLSD d")

        r = yield self.run_session(run)
        reader = yield self.run_session(
            as_reader, user="reader", password=READER_PASSWORD
        )
        files: dict[str, bytes] = r["files"]
        self.assertEqual(r["mlsd"], r["mlsd_cwd"])
        entries = {name: facts for facts, name in map(parse_facts, r["mlsd"])}
        self.assertEqual(len(entries), len(r["mlsd"]), r["mlsd"])  # no duplicate
        self.assertEqual(sorted(entries), sorted([*files, "sub1", "sub2"]))
        now = time.time()
        for name, data in files.items():
            facts = entries[name]
            self.assertEqual(
                set(facts), {"type", "size", "modify", "perm", "unique"}, name
            )
            self.assertEqual(facts["type"], "file")
            self.assertEqual(facts["size"], str(len(data)))
            self.assertLess(abs(epoch(facts["modify"]) - now), 3600, facts)
            self.assertEqual(facts["perm"], ALICE_FILE_PERM)
        for name in ("sub1", "sub2"):
            facts = entries[name]
            self.assertEqual(facts["type"], "dir")
            self.assertNotIn("size", facts)
            self.assertEqual(facts["perm"], ALICE_DIR_PERM)
            self.assertIn("unique", facts)
        uniques = [facts["unique"] for facts in entries.values()]
        self.assertEqual(len(set(uniques)), len(uniques), uniques)
        # MLSD of a file, or of nothing: refused, and the session goes on.
        self.assertTrue(r["mlsd_file"].startswith("501 "), r["mlsd_file"])
        self.assertTrue(r["mlsd_missing"].startswith("550 "), r["mlsd_missing"])
        self.assertTrue(r["noop"].startswith("200"), r["noop"])
        # MLST of each: same facts as MLSD gave (the same unique id), the
        # whole path after one space, "250-" first and "250 End" last.
        for name, reply in r["mlst"].items():
            lines, facts, path = parse_mlst(reply)
            self.assertTrue(lines[0].startswith("250-"), reply)
            self.assertEqual(lines[2], "250 End")
            self.assertEqual(path, f"/d/{name}")
            if name.startswith("sub"):
                # A directory's time may be known to MLST (its marker) but
                # not to MLSD (a common prefix): compare the rest.
                facts.pop("modify", None)
            self.assertEqual(facts, entries[name], name)
        self.assertTrue(r["mlst_missing"].startswith("550 "), r["mlst_missing"])
        # Another user's perm facts are his own.
        seen = {name: facts for facts, name in map(parse_facts, reader)}
        self.assertEqual(sorted(seen), sorted(entries))
        for name, facts in seen.items():
            expected = READER_DIR_PERM if name.startswith("sub") else READER_FILE_PERM
            self.assertEqual(facts["perm"], expected, name)
            self.assertEqual(facts["unique"], entries[name]["unique"])

    @defer.inlineCallbacks
    def test_opts_mlst_selects_facts(self) -> Any:
        data = b"twelve bytes"

        def run(ftp: ftplib.FTP) -> dict[str, Any]:
            ftp.mkd("d")
            put(ftp, "d/f.txt", data)
            r = {"opts": ftp.sendcmd("OPTS MLST type;size;")}
            r["mlst"] = ftp.sendcmd("MLST d/f.txt")
            r["mlst_dir"] = ftp.sendcmd("MLST d")
            r["feat"] = ftp.sendcmd("FEAT")
            r["mlsd"] = retrlines(ftp, "MLSD d")
            # Fact names are case-insensitive; unknown ones are ignored.
            r["opts_mode"] = ftp.sendcmd("OPTS MLST TYPE;unix.mode;bogus;")
            r["mlst_mode"] = ftp.sendcmd("MLST d/f.txt")
            r["mlst_mode_dir"] = ftp.sendcmd("MLST d")
            r["opts_none"] = ftp.sendcmd("OPTS MLST")
            r["mlst_none"] = ftp.sendcmd("MLST d/f.txt")
            return r

        r = yield self.run_session(run)
        self.assertEqual(r["opts"], "200 MLST OPTS type;size;")
        _, facts, path = parse_mlst(r["mlst"])
        self.assertEqual(facts, {"type": "file", "size": str(len(data))})
        self.assertEqual(path, "/d/f.txt")
        _, facts, _ = parse_mlst(r["mlst_dir"])
        self.assertEqual(facts, {"type": "dir"})
        self.assertIn(
            " MLST type*;size*;modify;perm;unique;UNIX.mode;COS.crc64;",
            r["feat"].split("\n"),
        )
        self.assertEqual(
            [parse_facts(line) for line in r["mlsd"]],
            [({"type": "file", "size": str(len(data))}, "f.txt")],
        )
        self.assertEqual(r["opts_mode"], "200 MLST OPTS type;UNIX.mode;")
        self.assertEqual(
            parse_mlst(r["mlst_mode"])[1], {"type": "file", "UNIX.mode": "0644"}
        )
        self.assertEqual(
            parse_mlst(r["mlst_mode_dir"])[1], {"type": "dir", "UNIX.mode": "0755"}
        )
        # No facts at all (RFC 3659 7.9: opts-good is "200 MLST OPTS" with
        # no trailing space then); the fact line is then " " + " <path>".
        self.assertEqual(r["mlst_none"].split("\n")[1], "  /d/f.txt")
        self.assertEqual(r["opts_none"], "200 MLST OPTS")

    @defer.inlineCallbacks
    def test_mlst_cos_crc64_only_when_selected(self) -> Any:
        small = b"crc me please"
        big = random_bytes(2 * MiB + 333)  # multipart: COS combines the parts

        def run(ftp: ftplib.FTP) -> dict[str, str]:
            put(ftp, "small.txt", small)
            put(ftp, "big.bin", big)
            return {
                "default": ftp.sendcmd("MLST small.txt"),
                "opts": ftp.sendcmd("OPTS MLST type;COS.crc64;"),
                "small": ftp.sendcmd("MLST small.txt"),
                "big": ftp.sendcmd("MLST big.bin"),
                "feat": ftp.sendcmd("FEAT"),
            }

        r = yield self.run_session(run)
        self.assertNotIn("COS.crc64", parse_mlst(r["default"])[1])
        self.assertEqual(r["opts"], "200 MLST OPTS type;COS.crc64;")
        self.assertIn(
            " MLST type*;size;modify;perm;unique;UNIX.mode;COS.crc64*;",
            r["feat"].split("\n"),
        )
        for label, data in (("small", small), ("big", big)):
            facts = parse_mlst(r[label])[1]
            if self.kind == "cos":
                self.assertEqual(
                    facts, {"type": "file", "COS.crc64": str(crc64(data))}, label
                )
            else:
                # A local store has no CRC-64 to show.
                self.assertEqual(facts, {"type": "file"}, label)

    # -- MFMT / MDTM ----------------------------------------------------------

    @defer.inlineCallbacks
    def test_mfmt_sets_modification_time(self) -> Any:
        data = random_bytes(5000)

        def run(ftp: ftplib.FTP) -> dict[str, Any]:
            ftp.mkd("dir")
            put(ftp, "dir/f.bin", data)
            r: dict[str, Any] = {
                "mfmt": attempt(ftp, "MFMT 20200102030405 dir/f.bin"),
                "mdtm": attempt(ftp, "MDTM dir/f.bin"),
                "mlst": attempt(ftp, "MLST dir/f.bin"),
                "mlsd": retrlines(ftp, "MLSD dir"),
                "list": retrlines(ftp, "LIST dir"),
                "size": attempt(ftp, "SIZE dir/f.bin"),
                "on_dir": attempt(ftp, "MFMT 20200102030405 dir"),
                "missing": attempt(ftp, "MFMT 20200102030405 dir/nope"),
            }
            for label, stamp in (
                ("short", "2020010203"),
                ("letters", "2020010203040x"),
                ("month13", "20201302030405"),
                ("dashes", "2020-01-02T03:04"),
            ):
                r[label] = attempt(ftp, f"MFMT {stamp} dir/f.bin")
            r["no_path"] = attempt(ftp, "MFMT 20200102030405")
            r["mdtm_after"] = attempt(ftp, "MDTM dir/f.bin")
            r["nlst"] = ftp.nlst("dir")
            r["back"] = get(ftp, "dir/f.bin")
            return r

        r = yield self.run_session(run)
        self.assertEqual(r["mfmt"], "213 Modify=20200102030405; dir/f.bin")
        self.assertEqual(r["mdtm"], "213 20200102030405")
        self.assertEqual(parse_mlst(r["mlst"])[1]["modify"], "20200102030405")
        (facts, name) = parse_facts(r["mlsd"][0])
        self.assertEqual((name, facts["modify"]), ("f.bin", "20200102030405"))
        # ls -l shows the year for a date more than six months old.
        self.assertIn(" Jan  2  2020 f.bin", r["list"][0])
        self.assertEqual(r["size"], f"213 {len(data)}")
        self.assertTrue(r["on_dir"].startswith("550 "), r["on_dir"])
        self.assertTrue(r["missing"].startswith("550 "), r["missing"])
        for label in ("short", "letters", "month13", "dashes", "no_path"):
            self.assertTrue(r[label].startswith("501 "), (label, r[label]))
        self.assertEqual(r["mdtm_after"], "213 20200102030405")
        # The bytes are untouched, in the store and through the gateway.
        self.assertEqual(self.gw.inspector.read("dir/f.bin"), data)
        self.assertEqual(r["back"], data)
        self.assertIn("dir/f.bin", self.keys())
        self.assertEqual(r["nlst"], ["f.bin"])

    # -- HASH and the X* digests -----------------------------------------------

    @defer.inlineCallbacks
    def test_hash_rang_and_x_digests(self) -> Any:
        # Read the store 1 MiB at a time, so a digest spans several reads
        # (and range ends fall inside them).
        accounts = self.gw.service.accounts
        accounts.settings = dataclasses.replace(accounts.settings, read_chunk=MiB)
        data = random_bytes(3 * MiB + 17)
        size = len(data)
        small = b"a file with spaces in its name"

        def run(ftp: ftplib.FTP) -> dict[str, str]:
            put(ftp, "big.bin", data)
            put(ftp, "my file.txt", small)
            r = {"default": attempt(ftp, "HASH big.bin")}
            r["current"] = attempt(ftp, "OPTS HASH")
            for algorithm in ("MD5", "SHA-1", "SHA-512", "CRC32"):
                r[f"opts {algorithm}"] = attempt(ftp, f"OPTS HASH {algorithm}")
                r[f"current {algorithm}"] = attempt(ftp, "OPTS HASH")
                r[f"hash {algorithm}"] = attempt(ftp, "HASH big.bin")
                if algorithm == "MD5":
                    r["feat md5"] = attempt(ftp, "FEAT")
            r["unknown"] = attempt(ftp, "OPTS HASH WHIRLPOOL")
            r["after unknown"] = attempt(ftp, "OPTS HASH")
            r["lower"] = attempt(ftp, "OPTS HASH sha-256")
            r["rang"] = attempt(ftp, "RANG 10 99")
            r["ranged"] = attempt(ftp, "HASH big.bin")
            r["unranged"] = attempt(ftp, "HASH big.bin")  # RANG is for one HASH
            r["rang across"] = attempt(ftp, f"RANG 1000 {2 * MiB + 5}")
            r["ranged across"] = attempt(ftp, "HASH big.bin")
            r["rang backwards"] = attempt(ftp, "RANG 99 10")
            r["hash spaced"] = attempt(ftp, "HASH my file.txt")
            r["hash missing"] = attempt(ftp, "HASH nope.bin")
            r["xsha256"] = attempt(ftp, "XSHA256 big.bin")
            r["xsha1"] = attempt(ftp, "XSHA1 big.bin")
            r["xmd5"] = attempt(ftp, "XMD5 big.bin")
            r["xcrc"] = attempt(ftp, "XCRC big.bin")
            # FlashFXP's form: quoted path, start, end (exclusive).
            r["xcrc range"] = attempt(ftp, f'XCRC "big.bin" 5 {2 * MiB + 7}')
            r["xcrc whole"] = attempt(ftp, f'XCRC "big.bin" 0 {size}')
            r["xmd5 range"] = attempt(ftp, f"XMD5 big.bin {MiB - 1} {3 * MiB + 1}")
            r["xsha1 spaced"] = attempt(ftp, 'XSHA1 "my file.txt"')
            r["xcrc spaced"] = attempt(ftp, "XCRC my file.txt")
            r["xcrc spaced range"] = attempt(ftp, 'XCRC "my file.txt" 2 9')
            r["xcrc missing"] = attempt(ftp, "XCRC nope.bin")
            return r

        r = yield self.run_session(run)
        last = size - 1
        self.assertEqual(r["default"], f"213 SHA-256 0-{last} {sha256(data)} big.bin")
        self.assertEqual(r["current"], "200 SHA-256")
        expected = {
            "MD5": hashlib.md5(data).hexdigest(),
            "SHA-1": hashlib.sha1(data).hexdigest(),
            "SHA-512": hashlib.sha512(data).hexdigest(),
            "CRC32": f"{zlib.crc32(data):08x}",
        }
        for algorithm, digest in expected.items():
            self.assertEqual(r[f"opts {algorithm}"], f"200 {algorithm}")
            self.assertEqual(r[f"current {algorithm}"], f"200 {algorithm}")
            self.assertEqual(
                r[f"hash {algorithm}"].lower(),
                f"213 {algorithm} 0-{last} {digest} big.bin".lower(),
            )
        self.assertIn(
            " HASH SHA-256;SHA-512;SHA-1;MD5*;CRC32", r["feat md5"].split("\n")
        )
        self.assertTrue(r["unknown"].startswith("504 "), r["unknown"])
        self.assertEqual(r["after unknown"], "200 CRC32")  # unchanged
        self.assertEqual(r["lower"], "200 SHA-256")
        self.assertTrue(r["rang"].startswith("350 "), r["rang"])
        self.assertEqual(
            r["ranged"], f"213 SHA-256 10-99 {sha256(data[10:100])} big.bin"
        )
        self.assertEqual(r["unranged"], r["default"])
        end = 2 * MiB + 5
        self.assertEqual(
            r["ranged across"],
            f"213 SHA-256 1000-{end} {sha256(data[1000 : end + 1])} big.bin",
        )
        self.assertTrue(r["rang backwards"].startswith("501 "), r["rang backwards"])
        self.assertEqual(
            r["hash spaced"],
            f"213 SHA-256 0-{len(small) - 1} {sha256(small)} my file.txt",
        )
        self.assertTrue(r["hash missing"].startswith("550 "), r["hash missing"])
        self.assertEqual(r["xsha256"], f"250 {sha256(data)}")
        self.assertEqual(r["xsha1"], f"250 {hashlib.sha1(data).hexdigest()}")
        self.assertEqual(r["xmd5"], f"250 {hashlib.md5(data).hexdigest()}")
        self.assertEqual(r["xcrc"], f"250 {zlib.crc32(data):08X}")
        self.assertEqual(
            r["xcrc range"], f"250 {zlib.crc32(data[5 : 2 * MiB + 7]):08X}"
        )
        self.assertEqual(r["xcrc whole"], r["xcrc"])
        self.assertEqual(
            r["xmd5 range"],
            f"250 {hashlib.md5(data[MiB - 1 : 3 * MiB + 1]).hexdigest()}",
        )
        self.assertEqual(r["xsha1 spaced"], f"250 {hashlib.sha1(small).hexdigest()}")
        self.assertEqual(r["xcrc spaced"], f"250 {zlib.crc32(small):08X}")
        self.assertEqual(r["xcrc spaced range"], f"250 {zlib.crc32(small[2:9]):08X}")
        self.assertTrue(r["xcrc missing"].startswith("550 "), r["xcrc missing"])

    # -- SITE -----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_site_commands(self) -> Any:
        small = b"site crc64"
        big = random_bytes(2 * MiB + 99)

        def run(ftp: ftplib.FTP) -> dict[str, str]:
            ftp.mkd("d")
            put(ftp, "d/f.txt", small)
            put(ftp, "big.bin", big)
            r = {"mlst before": ftp.sendcmd("MLST d/f.txt")}
            for label, line in (
                ("help", "SITE HELP"),
                ("chmod", "SITE CHMOD 644 d/f.txt"),
                ("chmod dir", "SITE CHMOD 755 d"),
                ("chmod missing", "SITE CHMOD 644 d/nope.txt"),
                ("chmod no path", "SITE CHMOD 644"),
                ("crc64", "SITE CRC64 d/f.txt"),
                ("crc64 big", "SITE CRC64 big.bin"),
                ("crc64 dir", "SITE CRC64 d"),
                ("crc64 missing", "SITE CRC64 nope"),
                ("bogus", "SITE BOGUS"),
            ):
                r[label] = attempt(ftp, line)
            r["mlst after"] = ftp.sendcmd("MLST d/f.txt")
            return r

        r = yield self.run_session(run)
        help_lines = r["help"].split("\n")
        self.assertTrue(help_lines[0].startswith("214-"), r["help"])
        self.assertTrue(help_lines[-1].startswith("214 "), r["help"])
        body = "\n".join(help_lines[1:-1])
        for word in ("CHMOD", "CRC64", "HELP"):
            self.assertIn(word, body)
        self.assertTrue(r["chmod"].startswith("200 "), r["chmod"])
        self.assertTrue(r["chmod dir"].startswith("200 "), r["chmod dir"])
        self.assertTrue(r["chmod missing"].startswith("550 "), r["chmod missing"])
        self.assertTrue(r["chmod no path"].startswith("501 "), r["chmod no path"])
        # CHMOD changes nothing: same facts, same bytes, same keys.
        self.assertEqual(r["mlst before"], r["mlst after"])
        self.assertEqual(self.gw.inspector.read("d/f.txt"), small)
        self.assertEqual(self.file_keys(), ["big.bin", "d/f.txt"])
        if self.kind == "cos":
            self.assertEqual(r["crc64"], f"213 {crc64(small)}")
            self.assertEqual(r["crc64 big"], f"213 {crc64(big)}")
        else:
            self.assertTrue(r["crc64"].startswith("550 "), r["crc64"])
            self.assertTrue(r["crc64 big"].startswith("550 "), r["crc64 big"])
        self.assertTrue(r["crc64 dir"].startswith("550 "), r["crc64 dir"])
        self.assertTrue(r["crc64 missing"].startswith("550 "), r["crc64 missing"])
        self.assertTrue(r["bogus"].startswith("502 "), r["bogus"])

    # -- HELP, ALLO, CLNT -----------------------------------------------------

    @defer.inlineCallbacks
    def test_help_allo_clnt(self) -> Any:
        data = random_bytes(1000)

        def run() -> dict[str, str]:
            ftp = ftplib.FTP(encoding="utf-8")
            ftp.connect(self.gw.host, self.gw.port, timeout=20)
            r = {"clnt before": attempt(ftp, "CLNT FileZilla")}
            r["help before"] = attempt(ftp, "HELP")
            ftp.login("alice", PASSWORD)
            r["clnt"] = attempt(ftp, "CLNT FileZilla 3.66.4")
            r["help"] = attempt(ftp, "HELP")
            r["help retr"] = attempt(ftp, "HELP RETR")
            r["help lower"] = attempt(ftp, "HELP stor")
            r["help bogus"] = attempt(ftp, "HELP BOGUS")
            r["allo"] = attempt(ftp, "ALLO 1000")
            r["allo record"] = attempt(ftp, "ALLO 1000 R 100")
            r["stor"] = put(ftp, "allo.bin", data)
            ftp.quit()
            return r

        r = yield in_thread(run)
        self.assertTrue(r["clnt before"].startswith("200 "), r["clnt before"])
        self.assertTrue(r["clnt"].startswith("200 "), r["clnt"])
        for label in ("help", "help before"):
            lines = r[label].split("\n")
            self.assertTrue(lines[0].startswith("214-"), r[label])
            self.assertTrue(lines[-1].startswith("214 "), r[label])
            words = " ".join(lines[1:-1]).split()
            for command in ("RETR", "STOR", "MLSD", "HASH", "XCRC", "FEAT"):
                self.assertIn(command, words, label)
        self.assertEqual(r["help retr"], "214 Syntax: RETR <path>")
        self.assertEqual(r["help lower"], "214 Syntax: STOR <path>")
        self.assertTrue(r["help bogus"].startswith("502 "), r["help bogus"])
        self.assertTrue(r["allo"].startswith("202 "), r["allo"])
        self.assertTrue(r["allo record"].startswith("202 "), r["allo record"])
        self.assertTrue(r["stor"].startswith("226"), r["stor"])
        self.assertEqual(self.gw.inspector.read("allo.bin"), data)

    # -- the X* aliases -------------------------------------------------------

    @defer.inlineCallbacks
    def test_x_directory_commands(self) -> Any:
        def run(ftp: ftplib.FTP) -> tuple[dict[str, str], list[str], list[str]]:
            r = {}
            for label, line in (
                ("xmkd", "XMKD xd"),
                ("xmkd again", "XMKD xd"),
                ("xmkd nested", "XMKD xd/inner"),
                ("xcwd", "XCWD xd"),
                ("xpwd", "XPWD"),
                ("pwd", "PWD"),
                ("xcwd inner", "XCWD inner"),
                ("xpwd inner", "XPWD"),
                ("xcup", "XCUP"),
                ("xpwd up", "XPWD"),
                ("xcwd missing", "XCWD missing"),
                ("xrmd nonempty", "XRMD /xd"),
                ("xrmd inner", "XRMD inner"),
                ("xcup2", "XCUP"),
                ("xpwd top", "XPWD"),
            ):
                r[label] = attempt(ftp, line)
            kept = self.keys()
            r["xrmd"] = attempt(ftp, "XRMD xd")
            r["xrmd missing"] = attempt(ftp, "XRMD xd")
            return r, kept, self.keys()

        r, kept, remaining = yield self.run_session(run)
        self.assertEqual(r["xmkd"], '257 "/xd" created')
        self.assertTrue(r["xmkd again"].startswith("550 "), r["xmkd again"])
        self.assertEqual(r["xmkd nested"], '257 "/xd/inner" created')
        self.assertTrue(r["xcwd"].startswith("250 "), r["xcwd"])
        self.assertEqual(r["xpwd"], '257 "/xd" is the current directory')
        self.assertEqual(r["pwd"], r["xpwd"])
        self.assertEqual(r["xpwd inner"], '257 "/xd/inner" is the current directory')
        self.assertTrue(r["xcup"].startswith("250 "), r["xcup"])
        self.assertEqual(r["xpwd up"], '257 "/xd" is the current directory')
        self.assertTrue(r["xcwd missing"].startswith("550 "), r["xcwd missing"])
        self.assertTrue(r["xrmd nonempty"].startswith("550 "), r["xrmd nonempty"])
        self.assertTrue(r["xrmd inner"].startswith("250 "), r["xrmd inner"])
        self.assertEqual(r["xpwd top"], '257 "/" is the current directory')
        self.assertEqual(kept, ["xd/"])  # inner removed, xd kept by its marker
        self.assertTrue(r["xrmd"].startswith("250 "), r["xrmd"])
        self.assertTrue(r["xrmd missing"].startswith("550 "), r["xrmd missing"])
        self.assertEqual(remaining, [])

    # -- STOU -----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_stou_stores_under_a_unique_name(self) -> Any:
        original = b"the original base.txt"
        sent = [random_bytes(70_000), random_bytes(3)]

        def stou(ftp: ftplib.FTP, command: str, data: bytes) -> tuple[str, str]:
            port = passive_port(ftp)
            conn = socket.create_connection((self.gw.host, port), timeout=20)
            try:
                preliminary = ftp.sendcmd(command)
                conn.sendall(data)
            finally:
                conn.close()
            return preliminary, ftp.voidresp()

        def run(ftp: ftplib.FTP) -> list[tuple[str, str]]:
            put(ftp, "base.txt", original)
            ftp.mkd("sub")
            ftp.cwd("sub")
            nested = stou(ftp, "STOU note.txt", b"nested")
            ftp.cwd("/")
            return [stou(ftp, "STOU base.txt", data) for data in sent] + [nested]

        (first, second, nested) = yield self.run_session(run)
        names = []
        for (preliminary, final), data in zip((first, second), sent):
            m = re.fullmatch(r"150 FILE: /(base\.txt\.[0-9a-f]+)", preliminary)
            self.assertIsNotNone(m, preliminary)
            assert m is not None
            self.assertTrue(final.startswith("226"), final)
            names.append(m.group(1))
            self.assertEqual(self.gw.inspector.read(m.group(1)), data)
        self.assertNotEqual(names[0], names[1])
        m = re.fullmatch(r"150 FILE: /sub/(note\.txt\.[0-9a-f]+)", nested[0])
        self.assertIsNotNone(m, nested[0])
        assert m is not None
        self.assertEqual(self.gw.inspector.read(f"sub/{m.group(1)}"), b"nested")
        self.assertEqual(self.gw.inspector.read("base.txt"), original)
        self.assertEqual(
            self.file_keys(), sorted(["base.txt", *names, f"sub/{m.group(1)}"])
        )

    # -- STAT -----------------------------------------------------------------

    @defer.inlineCallbacks
    def test_stat(self) -> Any:
        def run(ftp: ftplib.FTP) -> dict[str, Any]:
            ftp.mkd("d")
            put(ftp, "d/a.txt", b"12345")
            put(ftp, f"d/{UTF8_NAME}", b"x" * 1234)
            ftp.mkd("d/sub")
            ftp.sendcmd("REST 7")
            return {
                "status": ftp.sendcmd("STAT"),
                "stat dir": ftp.sendcmd("STAT d"),
                "list": retrlines(ftp, "LIST d"),
                "stat file": ftp.sendcmd("STAT d/a.txt"),
                "stat empty": ftp.sendcmd("STAT d/sub"),
                "stat missing": attempt(ftp, "STAT d/nowhere"),
                "noop": ftp.sendcmd("NOOP"),
            }

        def fields(line: str) -> list[str]:
            """An ls -l line without its date (which moves with the clock)."""
            parts = line.split(maxsplit=8)
            return parts[:5] + parts[8:]

        r = yield self.run_session(run)
        status = r["status"].split("\n")
        self.assertTrue(status[0].startswith("211-"), r["status"])
        self.assertEqual(status[-1], "211 End of status")
        self.assertIn(" Logged in as alice", status)
        self.assertIn(" Connected from 127.0.0.1", status)
        self.assertIn(" REST offset: 7", status)

        lines = r["stat dir"].split("\n")
        self.assertEqual(lines[0], "213-Status of /d:")
        self.assertEqual(lines[-1], "213 End of status")
        body = lines[1:-1]
        self.assertEqual(len(body), 3, body)
        for line in body:
            self.assertTrue(line.startswith(" ") and line[1] in "-d", line)
        self.assertEqual(
            sorted(fields(line) for line in body),
            sorted(fields(line) for line in r["list"]),
        )
        by_name = {fields(line)[-1]: fields(line) for line in body}
        self.assertEqual(sorted(by_name), sorted(["a.txt", UTF8_NAME, "sub"]))
        self.assertEqual(by_name["a.txt"][4], "5")
        self.assertEqual(by_name[UTF8_NAME][4], "1234")
        self.assertTrue(by_name["sub"][0].startswith("d"))
        self.assertTrue(by_name["a.txt"][0].startswith("-"))

        file_lines = r["stat file"].split("\n")
        self.assertEqual(len(file_lines), 3, file_lines)
        self.assertEqual(fields(file_lines[1])[-1], "a.txt")
        self.assertEqual(r["stat empty"].split("\n")[-1], "213 End of status")
        self.assertEqual(len(r["stat empty"].split("\n")), 2, r["stat empty"])
        self.assertTrue(r["stat missing"].startswith("550 "), r["stat missing"])
        self.assertTrue(r["noop"].startswith("200"), r["noop"])

    # -- renaming a tree ------------------------------------------------------

    @defer.inlineCallbacks
    def test_rename_directory_tree(self) -> Any:
        tree: dict[str, bytes] = {}
        for i in range(35):
            tree[f"f{i:02d}.bin"] = random_bytes(100 + 37 * i)
        for i in range(10):
            tree[f"nested/g{i}.txt"] = random_bytes(10 + i)
        for i in range(4):
            tree[f"nested/deeper/h{i} 空 .dat"] = random_bytes(2000 + i)
        tree["empty.bin"] = b""
        self.assertEqual(len(tree), 50)

        def build(ftp: ftplib.FTP) -> None:
            for directory in ("tree", "tree/nested", "tree/nested/deeper"):
                ftp.mkd(directory)
            ftp.mkd("tree/nested/hollow")  # an empty directory moves too
            for name, data in tree.items():
                put(ftp, f"tree/{name}", data)

        yield self.run_session(build)
        before = {k: sha256(self.gw.inspector.read(k)) for k in self.file_keys()}
        self.assertEqual(before, {f"tree/{n}": sha256(d) for n, d in tree.items()})

        def run(ftp: ftplib.FTP) -> dict[str, Any]:
            r: dict[str, Any] = {
                "missing rnfr": attempt(ftp, "RNFR nowhere"),
                "rnto after missing": attempt(ftp, "RNTO elsewhere"),
                "rnfr": attempt(ftp, "RNFR tree"),
                "rnto": attempt(ftp, "RNTO moved"),
                "nlst": sorted(ftp.nlst()),
                "nlst moved": sorted(ftp.nlst("moved")),
                "hollow": attempt(ftp, "CWD /moved/nested/hollow"),
            }
            ftp.cwd("/")
            r["keys"] = self.keys()
            r["into itself rnfr"] = attempt(ftp, "RNFR moved")
            r["into itself"] = attempt(ftp, "RNTO moved/nested/again")
            r["into itself keys"] = self.keys()
            ftp.mkd("other")
            ftp.sendcmd("RNFR moved")
            r["onto existing"] = attempt(ftp, "RNTO other")
            r["sample"] = get(ftp, "moved/nested/deeper/h3 空 .dat")
            return r

        r = yield self.run_session(run)
        self.assertTrue(r["missing rnfr"].startswith("550 "), r["missing rnfr"])
        self.assertTrue(
            r["rnto after missing"].startswith("503 "), r["rnto after missing"]
        )
        self.assertTrue(r["rnfr"].startswith("350 "), r["rnfr"])
        self.assertTrue(r["rnto"].startswith("250 "), r["rnto"])
        self.assertEqual(
            r["nlst moved"], sorted([*(n for n in tree if "/" not in n), "nested"])
        )
        self.assertTrue(r["hollow"].startswith("250 "), r["hollow"])
        # Every file moved with its bytes; nothing is left under tree/.
        after = {k: sha256(self.gw.inspector.read(k)) for k in self.file_keys()}
        self.assertEqual(after, {f"moved/{n}": sha256(d) for n, d in tree.items()})
        self.assertIn("moved/nested/hollow/", r["keys"])
        # Into itself: refused, and nothing changed.
        self.assertTrue(r["into itself rnfr"].startswith("350 "), r)
        self.assertIn(r["into itself"][:4], ("553 ", "550 "), r["into itself"])
        self.assertEqual(r["into itself keys"], r["keys"])
        self.assertTrue(r["onto existing"].startswith("550 "), r["onto existing"])
        self.assertEqual(r["sample"], tree["nested/deeper/h3 空 .dat"])
        self.assertEqual(self.file_keys("other"), [])
        self.assertEqual(
            len(self.file_keys("moved/")), 50, "the failed renames moved nothing"
        )
        # Nothing is left of the old tree: no key under tree/, and no
        # directory "tree" in the listing.
        self.assertEqual(self.keys("tree"), [])
        self.assertEqual(r["nlst"], ["moved"])

    # -- data connection hijacking --------------------------------------------

    @defer.inlineCallbacks
    def test_port_stealing_refused(self) -> Any:
        """
        RFC 2577 section 5: another host connecting first to the port PASV
        or EPSV announced is closed without a byte; the client's own
        connection then carries the transfer.
        """
        data = b"secret bytes nobody else may read"

        def steal(port: int) -> bytes:
            thief = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            thief.settimeout(10)
            try:
                thief.bind(("127.0.0.2", 0))
                thief.connect((self.gw.host, port))
                try:
                    return read_all(thief)  # b"": closed at once
                except ConnectionResetError:
                    return b""
            finally:
                thief.close()

        def transfer(ftp: ftplib.FTP, port: int, command: str) -> tuple[str, bytes]:
            conn = socket.create_connection((self.gw.host, port), timeout=20)
            try:
                preliminary = ftp.sendcmd(command)
                got = read_all(conn)
            finally:
                conn.close()
            final = ftp.voidresp()
            return f"{preliminary[:3]} {final[:3]}", got

        def run(ftp: ftplib.FTP) -> dict[str, Any]:
            put(ftp, "secret.txt", data)
            port = passive_port(ftp)
            r: dict[str, Any] = {"stolen pasv": steal(port)}
            r["list"] = transfer(ftp, port, "LIST")
            epsv = ftp.sendcmd("EPSV")
            m = re.fullmatch(r"229 .*\(\|\|\|(\d+)\|\)", epsv)
            assert m is not None, epsv
            port = int(m.group(1))
            r["stolen epsv"] = steal(port)
            r["retr"] = transfer(ftp, port, "RETR secret.txt")
            return r

        r = yield self.run_session(run)
        self.assertEqual(r["stolen pasv"], b"")
        self.assertEqual(r["list"][0], "150 226")
        self.assertEqual(len(r["list"][1].splitlines()), 1)
        self.assertTrue(r["list"][1].rstrip().endswith(b" secret.txt"), r["list"])
        self.assertEqual(r["stolen epsv"], b"")
        self.assertEqual(r["retr"], ("150 226", data))

    @defer.inlineCallbacks
    def test_eprt_bounce_refused(self) -> Any:
        """RFC 2577 section 3: EPRT only to the client's own address, port >= 1024."""
        data = random_bytes(50_000)

        def run(ftp: ftplib.FTP) -> dict[str, Any]:
            r: dict[str, Any] = {}
            for label, line in (
                ("other host", "EPRT |1|127.0.0.2|5000|"),
                ("remote host", "EPRT |1|192.0.2.1|5000|"),
                ("port 21", "EPRT |1|127.0.0.1|21|"),
                ("ipv6 from ipv4", "EPRT |2|::1|5000|"),
                ("other delimiter", "EPRT !1!127.0.0.2!5000!"),
                ("protocol 3", "EPRT |3|127.0.0.1|5000|"),
                ("garbage", "EPRT |1|not-an-address|5000|"),
                ("short", "EPRT |1|127.0.0.1|"),
            ):
                r[label] = attempt(ftp, line)
            # After all that, active mode (ftplib sends PORT) still works.
            ftp.set_pasv(False)
            put(ftp, "after.bin", data)
            r["back"] = get(ftp, "after.bin")
            return r

        r = yield self.run_session(run)
        for label in (
            "other host",
            "remote host",
            "port 21",
            "ipv6 from ipv4",
            "other delimiter",
        ):
            self.assertTrue(r[label].startswith("504 "), (label, r[label]))
        self.assertTrue(r["protocol 3"].startswith("522 "), r["protocol 3"])
        for label in ("garbage", "short"):
            self.assertTrue(r[label].startswith("501 "), (label, r[label]))
        self.assertEqual(r["back"], data)
        self.assertEqual(self.gw.inspector.read("after.bin"), data)

    @defer.inlineCallbacks
    def test_eprt_empty_argument_is_a_syntax_error(self) -> Any:
        """An EPRT with an empty argument ("EPRT ") is a 501, not a crash."""

        def run(ftp: ftplib.FTP) -> tuple[str, str]:
            return attempt(ftp, "EPRT "), attempt(ftp, "NOOP")

        eprt, noop = yield self.run_session(run)
        self.assertTrue(eprt.startswith("501 "), eprt)
        self.assertTrue(noop.startswith("200"), noop)


class LocalCommandTests(CommandTestsMixin, unittest.TestCase):
    kind = "local"


class CosCommandTests(CommandTestsMixin, unittest.TestCase):
    kind = "cos"


_NO_IPV6 = _ipv6_missing()


class IPv6Tests(unittest.TestCase):
    """RFC 2428 over a gateway listening on ::1 (the frontend, not the store)."""

    if _NO_IPV6 is not None:
        skip = f"no IPv6 here: {_NO_IPV6}"

    @defer.inlineCallbacks
    def test_epsv_eprt_and_pasv_522(self) -> Any:
        gw = yield start_gateway(
            self, "local", ftp_listen=("tcp6:0:interface=\\:\\:1",)
        )
        data = random_bytes(MiB + 123)
        active_data = random_bytes(200_000)

        def run() -> dict[str, Any]:
            ftp = connect(gw, host="::1")
            r: dict[str, Any] = {"af": ftp.af}
            try:
                # ftplib uses EPSV on IPv6.
                r["stor"] = put(ftp, "v6.bin", data)
                r["retr"] = get(ftp, "v6.bin")
                r["epsv"] = ftp.sendcmd("EPSV")
                r["epsv 2"] = ftp.sendcmd("EPSV 2")
                r["pasv"] = attempt(ftp, "PASV")
                r["noop"] = ftp.sendcmd("NOOP")
                r["port"] = attempt(ftp, "PORT 127,0,0,1,200,10")
                r["eprt v4"] = attempt(ftp, "EPRT |1|127.0.0.1|5000|")
                r["eprt port 21"] = attempt(ftp, "EPRT |2|::1|21|")
                # Active mode: ftplib sends EPRT |2|::1|port| on IPv6.
                ftp.set_pasv(False)
                r["active stor"] = put(ftp, "active.bin", active_data)
                r["active retr"] = get(ftp, "active.bin")
                r["active nlst"] = sorted(ftp.nlst())
                ftp.set_pasv(True)
                r["passive nlst"] = sorted(ftp.nlst())
                r["status"] = ftp.sendcmd("STAT")
                ftp.quit()
            finally:
                ftp.close()
            return r

        r = yield in_thread(run)
        self.assertEqual(r["af"], socket.AF_INET6)
        self.assertTrue(r["stor"].startswith("226"), r["stor"])
        self.assertEqual(r["retr"], data)
        self.assertEqual(gw.inspector.read("v6.bin"), data)
        for label in ("epsv", "epsv 2"):
            self.assertRegex(
                r[label], r"^229 Entering Extended Passive Mode \(\|\|\|\d+\|\)$"
            )
        self.assertTrue(r["pasv"].startswith("522 "), r["pasv"])
        self.assertTrue(r["noop"].startswith("200"), r["noop"])
        self.assertTrue(r["port"].startswith("504 "), r["port"])
        self.assertTrue(r["eprt v4"].startswith("504 "), r["eprt v4"])
        self.assertTrue(r["eprt port 21"].startswith("504 "), r["eprt port 21"])
        self.assertTrue(r["active stor"].startswith("226"), r["active stor"])
        self.assertEqual(r["active retr"], active_data)
        self.assertEqual(gw.inspector.read("active.bin"), active_data)
        self.assertEqual(r["active nlst"], ["active.bin", "v6.bin"])
        self.assertEqual(r["passive nlst"], r["active nlst"])
        self.assertIn(" Connected from ::1", r["status"].split("\n"))
