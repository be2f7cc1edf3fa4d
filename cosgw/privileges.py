"""
Whose the gateway's files are: the state directory, its keys and
certificate, the local stores' directories and the spool belong to the user
the gateway runs as, whether twistd dropped to it (C{--uid}/C{--gid}) or it
was started as that user.

twistd runs in three steps: the tap's C{makeService} (as whoever started
it), C{privilegedStartService} (still root: the listeners bind ports 21,
990 and 22 there), then it drops privileges and calls C{startService}.
Everything C{makeService} creates is therefore created as root unless told
otherwise, and a gateway whose C{.cosgw-tmp} belongs to root answers every
upload with 451.

The choice here: the tap names the user for the whole of C{makeService}
(L{creating_as}, from twistd's own C{--uid}/C{--gid}), and each place that
creates a file or directory does exactly that work as the user
(L{as_gateway_user}): effective uid, gid and supplementary groups switched
to those C{initgroups} and C{setuid} will give for good, and back to root
straight after, for C{privilegedStartService}.  So every file is created
by that user with that user's permissions, and a directory the user cannot
write (a storage root owned by someone else, a state directory under a
read-only C{/etc}) stops the start on one line, not the first upload.  Only
file-system calls run switched: key generation, imports and configured
keys and certificates (read like sshd reads its keys) stay root's.

Not chosen:
  - Creating as root and C{chown}ing afterwards: root may create what the
    user could never reach (a directory under C{/root}), and the error
    would come at the first upload, not at the start.
  - Creating in C{startService}, after the drop: the listeners bind
    before it, and the SSH factory and the TLS context need the host keys
    and the certificate by then; a bad directory would be found only after
    the ports are bound.
  - Running all of C{makeService} as the user: everything it reads, down
    to Python modules imported on first use, would have to be readable by
    the user, which a Python installed under C{/root} is not.

Files created after the drop (uploads, the spool, log files) are the user's
anyway.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from twisted.logger import Logger

__all__ = [
    "PrivilegeError",
    "RunAs",
    "as_gateway_user",
    "creating_as",
    "private_directory",
    "running_as",
    "twistd_user",
]

log = Logger(namespace="cosgw.service")


class PrivilegeError(Exception):
    """The gateway cannot act as the user it was told to run as."""


@dataclass(frozen=True)
class RunAs:
    """A user and group the gateway runs as, with the user's groups."""

    uid: int
    gid: int
    groups: tuple[int, ...]

    @classmethod
    def of(cls, uid: Optional[int], gid: Optional[int]) -> RunAs:
        """
        The identity twistd switches to for C{--uid}/C{--gid}: a missing
        gid is the user's primary group, a missing uid the current one; the
        groups are the user's, as C{initgroups} gives them.
        """
        if uid is None:
            uid = os.getuid()
        try:
            entry: Optional[pwd.struct_passwd] = pwd.getpwuid(uid)
        except KeyError:
            entry = None
        if gid is None:
            if entry is None:
                raise PrivilegeError(f"uid {uid} has no passwd entry; give --gid")
            gid = entry.pw_gid
        if entry is not None and uid != os.getuid():
            groups = tuple(os.getgrouplist(entry.pw_name, gid))
        elif uid == os.getuid():
            groups = tuple(os.getgroups())
        else:
            groups = (gid,)
        return cls(uid, gid, groups)

    def describe(self) -> str:
        """C{user nobody (uid 65534), group nogroup (gid 65534)}, for error lines."""
        try:
            user = pwd.getpwuid(self.uid).pw_name
        except KeyError:
            user = str(self.uid)
        try:
            group = grp.getgrgid(self.gid).gr_name
        except KeyError:
            group = str(self.gid)
        return f"user {user} (uid {self.uid}), group {group} (gid {self.gid})"


def twistd_user(options: Any) -> Optional[RunAs]:
    """
    The user twistd will drop to, from its C{--uid}/C{--gid} (the tap's
    options are a sub-command of twistd's, which already turned names into
    numbers); None when it keeps the identity it was started with.
    """
    parent = getattr(options, "parent", None)
    if parent is None:
        return None
    uid, gid = parent.get("uid"), parent.get("gid")
    if uid is None and gid is None:
        return None
    return RunAs.of(uid, gid)


def running_as(options: Any) -> str:
    """Who the gateway runs as, for an error line: twistd's user or our own."""
    try:
        user = twistd_user(options)
    except PrivilegeError:
        user = None
    if user is None:
        user = RunAs(os.geteuid(), os.getegid(), tuple(os.getgroups()))
    return f"the gateway runs as {user.describe()}"


#: The user the files of the gateway being built are created as (set by
#: L{creating_as}, read by L{as_gateway_user}).
_creating_as: Optional[RunAs] = None


@contextmanager
def creating_as(user: Optional[RunAs]) -> Iterator[None]:
    """
    While the block builds the gateway (C{makeService}), the files it
    creates are created as C{user} (see L{as_gateway_user}); None: as the
    process is.

    @raise PrivilegeError: C{user} is someone else and the process is not
        root, so twistd could not drop to them either.
    """
    global _creating_as
    if user is not None and _differs(user) and os.geteuid() != 0:
        raise PrivilegeError(
            f"cannot run as {user.describe()}: the gateway was not started as root"
        )
    previous, _creating_as = _creating_as, user
    try:
        yield
    finally:
        _creating_as = previous


def _differs(user: RunAs) -> bool:
    return (user.uid, user.gid) != (os.geteuid(), os.getegid())


@contextmanager
def as_gateway_user() -> Iterator[None]:
    """
    Run the block's file-system calls with the effective uid, gid and
    groups of the user L{creating_as} named, then switch back; a no-op
    when none was named or it is who the process already is.

    Only effective ids change (the real uid stays root), so switching back
    is allowed.  Keep the block to file-system calls: nothing in it may
    need to read what only root can (see the module docstring).
    """
    user = _creating_as
    if user is None or not _differs(user):
        yield
        return
    groups, egid = os.getgroups(), os.getegid()
    os.setgroups(list(user.groups))
    os.setegid(user.gid)
    os.seteuid(user.uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(egid)
        os.setgroups(groups)


def private_directory(path: Path) -> Path:
    """
    C{path} as a directory only the gateway's user may enter (0700):
    created so, as that user (missing parents get the usual mode); or, when
    it exists and is the user's with wider permissions (systemd's
    C{StateDirectory} is 0755 unless told), narrowed to 0700 with a log
    line.  Blocking; for start-up.

    @raise OSError: C{path} cannot be created (naming it).
    """
    path = Path(path)
    narrowed = None
    with as_gateway_user():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            st = path.stat()
            mine = st.st_uid == os.geteuid()
            if stat.S_ISDIR(st.st_mode) and mine and st.st_mode & 0o077:
                os.chmod(path, 0o700)
                narrowed = stat.S_IMODE(st.st_mode)
    if narrowed is not None:
        log.info(
            "state directory {path} was mode {mode:04o}; now 0700",
            path=str(path),
            mode=narrowed,
        )
    return path
