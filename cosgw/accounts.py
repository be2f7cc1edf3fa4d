"""
Who a logged-in user is, once the checker has said they are who they claim:
the store their home is in, the home prefix, their permissions and the
transfer settings.  Both frontends build their avatars from here, so a user
sees the same file system over FTP and SFTP.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Optional

from cosgw.interfaces import IObjectStore
from cosgw.transfer import TransferSettings, UploadRegistry
from cosgw.vfs import ObjectFileSystem


@dataclass(frozen=True)
class Account:
    name: str
    store: IObjectStore
    home: str
    permissions: frozenset[str]


class Accounts:
    """The accounts of a running gateway, by user name."""

    def __init__(
        self,
        accounts: Mapping[str, Account],
        settings: TransferSettings,
        runner: Optional[Any] = None,
    ) -> None:
        self.accounts = dict(accounts)
        self.settings = settings
        #: Runs CPU-bound work (hashing) in the gateway's thread pool.
        self.runner = runner
        #: Uploads in progress on this gateway, across all sessions and
        #: protocols, so a resume never picks one that is still being fed.
        self.registry = UploadRegistry()

    def filesystem(self, name: str) -> ObjectFileSystem:
        """
        A new file system for one session of user C{name}.

        @raise KeyError: no such account (the checker should have refused).
        """
        account = self.accounts[name]
        return ObjectFileSystem(
            account.store,
            account.home,
            account.permissions,
            self.settings,
            user=account.name,
            registry=self.registry,
            runner=self.runner,
        )
