"""
Tests for L{cosgw.privileges}: the gateway's files (local storage, its
C{.cosgw-tmp}, the state directory, host keys, TLS key and certificate, the
SFTP spool) belong to the user it runs as.

As root (the test machine runs as root), the gateway is started the way
the old systemd unit started it, C{twistd --uid nobody --gid <nobody's
group> cosftp}, and real FTP (ftplib) and SFTP (paramiko) uploads go to a
local storage; as any other user, it is started as that user.  Either way
every file it made must be that user's, with the state directory 0700 and
its keys 0600.
"""

from __future__ import annotations

import ftplib
import io
import os
import pwd
import stat
from pathlib import Path

import paramiko
from twisted.logger import LogLevel, formatEvent
from twisted.scripts.twistd import ServerOptions
from twisted.trial import unittest

from cosgw.frontends.ftp.tls import generate_self_signed
from cosgw.privileges import (
    PrivilegeError,
    RunAs,
    as_gateway_user,
    creating_as,
    private_directory,
    twistd_user,
)
from tests.harness import host_keys
from tests.logevents import LogEvents
from tests.processtesting import ROOT, TWISTD, Child, free_port, scratch

ROOT_USER = os.geteuid() == 0
PASSWORD = "privileges-pw"
TIMEOUT = 20


def target() -> RunAs:
    """Who the gateway runs as: nobody when the tests run as root, else us."""
    if ROOT_USER:
        nobody = pwd.getpwnam("nobody")
        return RunAs.of(nobody.pw_uid, nobody.pw_gid)
    return RunAs(os.getuid(), os.getgid(), tuple(os.getgroups()))


def identity_options(user: RunAs) -> list[str]:
    """The twistd options that make it run as C{user}: none when it is us."""
    if ROOT_USER:
        return ["--uid", str(user.uid), "--gid", str(user.gid)]
    return []


def workspace(testcase: unittest.TestCase, user: RunAs) -> Path:
    """
    A directory the gateway's user owns (as systemd's StateDirectory or an
    operator's install -d -o cosgw would give it), for its config, state
    and storage.
    """
    base = scratch(testcase, "cosgw-privileges-")
    os.chown(base, user.uid, user.gid)
    return base


def write_config(base: Path, ftp_port: int, sftp_port: int, more: str = "") -> Path:
    config = base / "cosgw.ini"
    config.write_text(
        f"[server]\n{more}"
        f"state_dir = {base}/state\n"
        f"ftp_listen = tcp:{ftp_port}:interface=127.0.0.1\n"
        f"sftp_listen = tcp:{sftp_port}:interface=127.0.0.1\n"
        "passive_ports = 62000-62999\n"
        "admin_listen =\n"
        f"[storage:s]\ntype = local\npath = {base}/data\n"
        f"[user:bob]\npassword = {PASSWORD}\nstorage = s\npermissions = all\n"
    )
    return config


class GatewayFilesTests(unittest.SynchronousTestCase):
    """The real gateway, as root dropping to nobody or as its own user."""

    def start(self, base: Path, user: RunAs) -> tuple[Child, int, int]:
        for directory in (ROOT, *ROOT.parents):
            st = directory.stat()
            if not (st.st_mode & 0o001 or st.st_uid == user.uid):
                self.fail(
                    f"{directory} cannot be entered by uid {user.uid}: the gateway"
                    " could not import its own modules once it dropped privileges"
                )
        ftp_port, sftp_port = free_port(), free_port()
        config = write_config(base, ftp_port, sftp_port)
        argv = [TWISTD, "-n", "--pidfile=", "--logfile=-", *identity_options(user)]
        child = Child(self, [*argv, "cosftp", "--config", str(config)], base)
        child.wait_for_port(ftp_port)
        child.wait_for_port(sftp_port)
        return child, ftp_port, sftp_port

    def test_uploads_and_state_belong_to_the_gateway_user(self) -> None:
        user = target()
        base = workspace(self, user)
        child, ftp_port, sftp_port = self.start(base, user)
        # The process really runs as the user: real, effective, saved, fs.
        status = Path(f"/proc/{child.pid}/status").read_text()
        (uids,) = [
            line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")
        ]
        self.assertEqual(uids, [str(user.uid)] * 4)

        ftp = ftplib.FTP()
        ftp.connect("127.0.0.1", ftp_port, timeout=TIMEOUT)
        ftp.login("bob", PASSWORD)
        reply = ftp.storbinary("STOR ftp.bin", io.BytesIO(b"f" * 100_000))
        self.assertTrue(reply.startswith("226"), reply)
        ftp.quit()

        transport = paramiko.Transport(("127.0.0.1", sftp_port))
        self.addCleanup(transport.close)
        transport.connect(username="bob", password=PASSWORD)
        sftp = paramiko.SFTPClient.from_transport(transport)
        assert sftp is not None
        with sftp.open("sftp.bin", "wb") as f:
            f.write(b"s" * 100_000)
        # Changing a file in place copies it to the spool first.
        with sftp.open("sftp.bin", "r+") as f:
            f.seek(10)
            f.write(b"EDITED")
        sftp.close()

        data = base / "data"
        self.assertEqual((data / "ftp.bin").read_bytes(), b"f" * 100_000)
        self.assertEqual(
            (data / "sftp.bin").read_bytes(), b"s" * 10 + b"EDITED" + b"s" * 99_984
        )
        state = base / "state"
        made = sorted(
            p for p in base.rglob("*") if p.name not in ("twistd.log", "cosgw.ini")
        )
        for name in (
            "data/.cosgw-tmp",
            "data/ftp.bin",
            "data/sftp.bin",
            "state/ssh_host_ed25519_key",
            "state/ssh_host_rsa_key",
            "state/tls-key.pem",
            "state/tls-cert.pem",
            "state/spool",
        ):
            self.assertIn(base / name, made)
        for path in made:
            st = path.lstat()
            self.assertEqual((st.st_uid, st.st_gid), (user.uid, user.gid), path)
        self.assertEqual(stat.S_IMODE(state.stat().st_mode), 0o700)
        self.assertEqual(stat.S_IMODE((state / "spool").stat().st_mode), 0o700)
        for key in ("ssh_host_ed25519_key", "ssh_host_rsa_key", "tls-key.pem"):
            self.assertEqual(stat.S_IMODE((state / key).stat().st_mode), 0o600, key)

    def test_a_temporary_area_it_cannot_write_stops_the_start(self) -> None:
        """
        A C{.cosgw-tmp} the user cannot write (left by an older gateway that
        made it as root, before dropping privileges) used to fail every
        upload with 451; now the start fails, on one line naming it.
        """
        user = target()
        base = workspace(self, user)
        tmp = base / "data" / ".cosgw-tmp"
        tmp.mkdir(parents=True)
        os.chown(base / "data", user.uid, user.gid)
        if ROOT_USER:
            os.chmod(tmp, 0o755)  # root's, as the old gateway left it
        else:
            os.chmod(tmp, 0o555)  # ours, but read-only
            self.addCleanup(os.chmod, tmp, 0o755)
        config = write_config(base, free_port(), free_port())
        argv = [TWISTD, "-n", "--pidfile=", "--logfile=-", *identity_options(user)]
        child = Child(self, [*argv, "cosftp", "--config", str(config)], base)
        self.assertEqual(child.wait(TIMEOUT), 1)
        lines = child.text().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertIn(
            f"cosftp: {tmp}: cannot write files here: Permission denied", lines[0]
        )
        self.assertIn(f"uid {user.uid}", lines[0])


class TwistdUserTests(unittest.SynchronousTestCase):
    """twistd's own --uid/--gid, as the tap sees them."""

    def parse(self, *options: str) -> object:
        path = write_config(scratch(self), 2121, 2222)
        server = ServerOptions()
        server.parseOptions([*options, "cosftp", "--config", str(path)])
        return server.subOptions

    def test_uid_and_gid(self) -> None:
        nobody = pwd.getpwnam("nobody")
        user = twistd_user(self.parse("--uid", "nobody", "--gid", str(nobody.pw_gid)))
        self.assertEqual(user, RunAs.of(nobody.pw_uid, nobody.pw_gid))

    def test_gid_defaults_to_the_users_group(self) -> None:
        nobody = pwd.getpwnam("nobody")
        user = twistd_user(self.parse("--uid", str(nobody.pw_uid)))
        assert user is not None
        self.assertEqual((user.uid, user.gid), (nobody.pw_uid, nobody.pw_gid))
        self.assertIn(nobody.pw_gid, user.groups)

    def test_none_given(self) -> None:
        self.assertIsNone(twistd_user(self.parse()))


class ActingAsTests(unittest.SynchronousTestCase):
    def test_switches_for_the_block_only(self) -> None:
        ids = (os.geteuid(), os.getegid(), sorted(os.getgroups()))
        if ROOT_USER:
            user = target()
            shared = workspace(self, user)
            with creating_as(user), as_gateway_user():
                self.assertEqual((os.geteuid(), os.getegid()), (user.uid, user.gid))
                (shared / "made").write_bytes(b"")
            st = (shared / "made").stat()
            self.assertEqual((st.st_uid, st.st_gid), (user.uid, user.gid))
        else:
            other = RunAs(os.getuid() + 1, os.getgid(), (os.getgid(),))
            with self.assertRaises(PrivilegeError) as caught:
                with creating_as(other):
                    pass
            self.assertIn("not started as root", str(caught.exception))
        # Outside the block, and with no user named, nothing changes.
        with as_gateway_user():
            self.assertEqual((os.geteuid(), os.getegid(), sorted(os.getgroups())), ids)
        self.assertEqual((os.geteuid(), os.getegid(), sorted(os.getgroups())), ids)


class PrivateDirectoryTests(unittest.SynchronousTestCase):
    def test_created_private(self) -> None:
        path = scratch(self) / "state"
        private_directory(path)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o700)

    def test_ours_narrowed_with_a_line(self) -> None:
        events = LogEvents(self, "cosgw.service")
        path = scratch(self)
        os.chmod(path, 0o755)
        private_directory(path)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o700)
        (event,) = events.at(LogLevel.info)
        self.assertIn("was mode 0755; now 0700", formatEvent(event))

    def test_someone_elses_left_alone(self) -> None:
        if ROOT_USER:
            path = scratch(self)
            os.chmod(path, 0o755)
            os.chown(path, pwd.getpwnam("nobody").pw_uid, -1)
        else:
            path = Path("/tmp")
        before = path.stat().st_mode
        private_directory(path)
        self.assertEqual(path.stat().st_mode, before)

    def test_a_state_directory_it_cannot_write_stops_the_start(self) -> None:
        """
        A state directory the user cannot write (made by an older gateway
        as root) failed, with keys and certificate configured elsewhere,
        only the SFTP writes that need the spool, at their close; the start
        fails instead, on one line naming the spool.
        """
        user = target()
        base = workspace(self, user)
        certificate, key = generate_self_signed(scratch(self))
        keys = "\n    ".join(str(k) for k in host_keys())
        state = base / "state"
        state.mkdir(mode=0o700)
        if not ROOT_USER:
            os.chmod(state, 0o500)  # ours, but read-only
            self.addCleanup(os.chmod, state, 0o700)
        more = (
            f"tls_certificate = {certificate}\ntls_key = {key}\n"
            f"ssh_host_keys =\n    {keys}\n"
        )
        config = write_config(base, free_port(), free_port(), more)
        argv = [TWISTD, "-n", "--pidfile=", "--logfile=-", *identity_options(user)]
        child = Child(self, [*argv, "cosftp", "--config", str(config)], base)
        self.assertEqual(child.wait(TIMEOUT), 1)
        lines = child.text().splitlines()
        self.assertEqual(len(lines), 1, lines)
        self.assertTrue(lines[0].startswith(f"cosftp: {state}/spool: "), lines[0])
        self.assertIn(": Permission denied (the gateway runs as user ", lines[0])
