"""
The multipart uploads a gateway knows of: those it is writing right now
(never offered for a resume, never swept) and those kept, invisible, after
their client went away, so that the client can resume them.

A kept upload stops being useful once something else happens to its name:
a new upload of the name from byte 0 (as STOR truncates a file on disk), an
object appearing under the name, another upload of the name kept after it.
The file system then aborts it (L{cosgw.vfs.resume.supersede}), which needs
to know the kept uploads of a name without asking the store, so they are
indexed here by (store, key).  Whoever counts kept uploads (a user's quota)
listens for the ones that end (L{UploadRegistry.listen},
L{UploadRegistry.gone}): aborted by the file system or by the sweeper.
"""

from __future__ import annotations

from collections.abc import Callable


class UploadRegistry:
    """
    The uploads this gateway is writing (C{upload_id in registry}) and the
    kept ones it knows of, across all sessions and protocols.
    """

    def __init__(self) -> None:
        self._active: set[str] = set()
        #: Kept upload id -> (store, key); and the ids of each (store, key).
        self._kept: dict[str, tuple[object, str]] = {}
        self._by_name: dict[tuple[object, str], set[str]] = {}
        self._listeners: set[Callable[[str], None]] = set()

    # -- being written ------------------------------------------------------

    def add(self, upload_id: str) -> None:
        """This gateway writes C{upload_id} now (a resumed one is no longer kept)."""
        self._active.add(upload_id)
        self._unindex(upload_id)

    def discard(self, upload_id: str) -> None:
        """This gateway stopped writing C{upload_id}."""
        self._active.discard(upload_id)

    def __contains__(self, upload_id: object) -> bool:
        return upload_id in self._active

    @property
    def writing(self) -> int:
        """How many uploads this gateway writes now (a stop waits for none)."""
        return len(self._active)

    # -- kept for a resume --------------------------------------------------------

    def keep(self, store: object, key: str, upload_id: str) -> None:
        """
        C{upload_id} of C{key} in C{store} is kept for a resume (interrupted
        here, or found in the store by a look-up); ignored while it is
        being written.
        """
        if upload_id in self._active:
            return
        self._unindex(upload_id)
        self._kept[upload_id] = (store, key)
        self._by_name.setdefault((store, key), set()).add(upload_id)

    def kept(self, store: object, key: str) -> list[str]:
        """The kept uploads of C{key} in C{store} this gateway knows of."""
        return sorted(self._by_name.get((store, key), ()))

    def listen(self, callback: Callable[[str], None]) -> None:
        """Call C{callback(upload_id)} for every upload that is L{gone}; once per callback."""
        self._listeners.add(callback)

    def gone(self, upload_id: str) -> None:
        """
        C{upload_id} no longer exists (aborted by the file system or the
        sweeper): forget it and tell the listeners, so that a quota stops
        counting its parts.
        """
        self._unindex(upload_id)
        for callback in list(self._listeners):
            callback(upload_id)

    def _unindex(self, upload_id: str) -> None:
        where = self._kept.pop(upload_id, None)
        if where is not None:
            ids = self._by_name[where]
            ids.discard(upload_id)
            if not ids:
                del self._by_name[where]
