"""
Accounts kept in files: the C{cosgw-passwd} console script that hashes a
password for the config, C{name:hash} passwd files, and the generated account
of the embedded default.

The embedded default must never run with a well-known password or none: at
the first start it generates one, stores only its hash in the state
directory and hands the password back once, to be shown to the operator.

Everything here blocks: call it at start-up, before the reactor runs, or
from the command line.
"""

from __future__ import annotations

import argparse
import getpass
import secrets
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Optional, Union

from cosgw.auth.files import create_exclusively
from cosgw.auth.hashes import hash_password

__all__ = [
    "DEFAULT_USERNAME",
    "PASSWD_FILENAME",
    "add_arguments",
    "ensure_generated_account",
    "load_passwd_file",
    "main",
    "run",
]

PASSWD_FILENAME = "users.passwd"
DEFAULT_USERNAME = "cosgw"


# --------------------------------------------------------------------------
# The cosgw-passwd console script
# --------------------------------------------------------------------------


def _read_stdin_password() -> str:
    """One line from stdin, without its line ending but otherwise intact."""
    line = sys.stdin.readline()
    if line.endswith("\n"):
        line = line[:-1]
    if line.endswith("\r"):
        line = line[:-1]
    return line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of C{cosgw-passwd}, for its parser and C{cosgw passwd}'s."""
    parser.description = (
        "Hash a password for the cosgw config. Paste the printed line as"
        " 'password = <hash>'."
    )
    parser.add_argument(
        "--stdin",
        action="store_true",
        help="read the password from the first line of stdin (for scripts)",
    )


def run(args: argparse.Namespace, prog: str) -> int:
    """
    Asks for a password twice on the terminal, or reads one line from stdin
    with C{--stdin} for provisioning scripts, and prints its hash on stdout,
    to paste as C{password = <hash>} in the config.  The password itself is
    never echoed or printed.

    @param prog: the command's name, for its error messages.
    @return: the exit status: 0 on success, 1 if the password is empty, the
        two entries differ or input ended.
    """
    try:
        if args.stdin:
            password = _read_stdin_password()
        else:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Password (again): ")
            if password != again:
                print(f"{prog}: the passwords do not match", file=sys.stderr)
                return 1
    except (EOFError, KeyboardInterrupt):
        print(f"{prog}: no password read", file=sys.stderr)
        return 1
    if not password:
        print(f"{prog}: refusing an empty password", file=sys.stderr)
        return 1
    print(hash_password(password))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """
    The C{cosgw-passwd} console script (also C{python -m cosgw.auth}); the
    C{cosgw passwd} command is the same L{run}.

    @return: the exit status (see L{run}).
    """
    parser = argparse.ArgumentParser(prog="cosgw-passwd")
    add_arguments(parser)
    return run(parser.parse_args(argv), "cosgw-passwd")


# --------------------------------------------------------------------------
# Passwd files and the generated account of the embedded default
# --------------------------------------------------------------------------


def load_passwd_file(path: Union[str, Path]) -> dict[str, str]:
    """
    Read a C{name:hash} file (one account a line; blank lines and C{#}
    comments ignored) into C{{name: hash}}.

    This blocks: call it at start-up, before the reactor runs, or in a
    thread.

    @raise ValueError: on a malformed or duplicate line, naming the file and
        line number but never quoting the line.
    @raise OSError: if the file cannot be read.
    """
    path = Path(path)
    users: dict[str, str] = {}
    with path.open("r", encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            name, sep, stored = line.partition(":")
            if not sep or not name or not stored:
                raise ValueError(f"{path}, line {number}: expected 'name:hash'")
            if name in users:
                raise ValueError(f"{path}, line {number}: duplicate user {name!r}")
            users[name] = stored
    return users


def _generate_password() -> str:
    """96 random bits as 16 URL-safe characters: no spaces or quotes to mistype."""
    return secrets.token_urlsafe(12)


def ensure_generated_account(
    state_dir: Path, username: str = DEFAULT_USERNAME
) -> tuple[str, Optional[str]]:
    """
    Make sure the embedded default has an account, so a fresh install never
    runs with a well-known password or none.

    If C{state_dir/users.passwd} is missing, create C{state_dir} (mode 0700),
    generate a random password and store only its hash as C{username:hash}
    in that file (mode 0600), written to a temporary file and linked into
    place so a crash or a concurrent start never leaves a partial file.

    This blocks: call it at start-up, before the reactor runs.

    @return: C{(hash, password)} when the account was just created: the
        caller shows the password once, as nothing can recover it later.
        C{(hash, None)} when the file already existed.
    @raise ValueError: if C{username} is unusable, or an existing file has no
        account C{username}.
    """
    if not username or ":" in username or "\n" in username:
        raise ValueError("the generated account's user name is unusable")
    state_dir = Path(state_dir)
    path = state_dir / PASSWD_FILENAME
    if not path.exists():
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        password = _generate_password()
        stored = hash_password(password)
        if create_exclusively(path, f"{username}:{stored}\n"):
            return stored, password
    users = load_passwd_file(path)
    if username not in users:
        raise ValueError(f"{path} has no account {username!r}")
    return users[username], None
