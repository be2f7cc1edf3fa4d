"""
The commands that move data over a data connection: RETR, STOR, APPE,
STOU, LIST, NLST and MLSD, with REST before them and ABOR during them.

A transfer runs detached from the control connection (see the protocol's
command queue), as an L{ActiveTransfer} that ABOR, STAT and the loss of
the control connection act on.  Downloads and uploads stream through the
file system's readers and uploads (L{cosgw.vfs}) with backpressure and the
user's rates inside; listings stream page by page, so the first line goes
out before the last page is fetched.  A client's reset in the middle of an
upload is an abort (426, no object), never a "226 Transfer complete" of a
partial file; the 226 of an upload is sent only once the store confirmed.
TYPE A moves bytes unchanged, as vsftpd does by default: an object store
holds bytes, and rewriting line ends would make SIZE and REST lie.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IConsumer, IProducer, IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger
from zope.interface import implementer

from cosgw import vfs
from cosgw.frontends.ftp.context import CommandContext
from cosgw.frontends.ftp.data import DataChannel, ListingSender
from cosgw.frontends.ftp.facts import format_facts
from cosgw.frontends.ftp.replies import Reply
from cosgw.frontends.listing import format_list_line
from cosgw.interfaces import IFileSystem, IListing, IUpload

# One namespace for the whole frontend, as when it was one module.
log = Logger(namespace="cosgw.frontends.ftp")

#: Seconds to wait, after an upload's end of file, for the control
#: connection of a killed client to show it is gone, when there is reason
#: to doubt the end (see L{TransferCommands._client_left}).
EOF_GRACE = 0.02

#: An upload whose data connection was quiet this long (seconds) before it
#: ended is in doubt: a client that finishes its file closes the connection
#: right after its last bytes (measured over 200 ftplib uploads each: 0.1 ms
#: at most on a quiet machine; with a load of 3 on its 2 cores, 0.12 ms for
#: 90% of them, 0.44 ms at most); a killed one may have been quiet for any
#: time before (lftp at 1 MB/s writes every 0.2 to 1 ms).
EOF_QUIET = 0.00025

#: Linux's TCP_ESTABLISHED (include/net/tcp_states.h), the first byte of
#: TCP_INFO: any other state means the peer's FIN or RST has arrived.
_TCP_ESTABLISHED = 1


def control_closed(transport: Any) -> Optional[bool]:
    """
    Whether the kernel holds the end (FIN or RST) of the connection under
    C{transport}, whether or not the reactor has read it yet: its TCP state
    (Linux's TCP_INFO), through a TLS layer if there is one.

    @return: True when the peer ended the connection (or it is gone),
        False while it is established, None when this cannot be told (not
        a TCP socket, not Linux).
    """
    info = getattr(socket, "TCP_INFO", None)
    for layer in (transport, getattr(transport, "transport", None)):
        get_handle = getattr(layer, "getHandle", None)
        if get_handle is None:
            continue
        try:
            handle = get_handle()
        except AttributeError:
            return True  # Twisted's TCP transport drops its socket when lost
        if not isinstance(handle, socket.socket):
            continue
        if info is None:
            return None
        try:
            state = handle.getsockopt(socket.IPPROTO_TCP, info, 1)[0]
        except OSError:
            return True  # closed under us
        return state != _TCP_ESTABLISHED
    return None


@implementer(IConsumer)
class _Arrivals:
    """An upload, and when the client's bytes last arrived for it."""

    def __init__(self, upload: IUpload, clock: IReactorTime) -> None:
        self._upload = upload
        self._clock = clock
        self.last = clock.seconds()

    def registerProducer(self, producer: IProducer, streaming: bool) -> None:
        self._upload.registerProducer(producer, streaming)

    def unregisterProducer(self) -> None:
        self._upload.unregisterProducer()

    def write(self, data: bytes) -> None:
        self.last = self._clock.seconds()
        self._upload.write(data)


#: Commands that run detached: the control channel keeps reading meanwhile.
TRANSFER_COMMANDS = frozenset({"RETR", "STOR", "APPE", "STOU", "LIST", "NLST", "MLSD"})

#: Formats one listing entry: (entry, the entry under the name the session
#: shows, file system, now) -> line.
LineFormat = Callable[[vfs.Entry, vfs.Entry, IFileSystem, float], str]


class ActiveTransfer:
    """
    The transfer a control connection is running.  ABOR, STAT and the loss
    of the control connection act on it; the transfer's coroutine reads
    C{aborted} and C{client_gone} to choose its reply and what to keep.
    """

    def __init__(self, command: str, argument: str, clock: IReactorTime) -> None:
        self.command = command
        self.argument = argument
        self._clock = clock
        self.started = clock.seconds()
        self.aborted = False
        self.client_gone = False
        #: Why the transfer stopped without ABOR, for its audit event.
        self.why = "the client went away"
        self.channel: Optional[DataChannel] = None
        self.waiting: Optional[Deferred[Any]] = None
        self.counter: Callable[[], int] = lambda: 0
        #: Lines sent after the transfer's own reply (ABOR's 226).
        self.after_reply: list[str] = []

    def elapsed(self) -> float:
        return self._clock.seconds() - self.started

    def cancel(self, client_gone: bool, why: Optional[str] = None) -> None:
        """
        Stop now: ABOR (C{client_gone} False), or as when the client went
        away (an upload is kept for a resume): it did, or C{why} says what
        else stopped it.
        """
        if client_gone:
            self.client_gone = True
            if why is not None:
                self.why = why
        else:
            self.aborted = True
        if self.waiting is not None and not self.waiting.called:
            self.waiting.cancel()
        if self.channel is not None:
            self.channel.abort()


class TransferCommands(CommandContext):
    """Data transfers, and REST and ABOR that act on them."""

    def _current_transfer(self) -> ActiveTransfer:
        assert self.transfer is not None, "a transfer command runs as a transfer"
        return self.transfer

    async def _data_channel(self, transfer: ActiveTransfer) -> DataChannel:
        return await self.data.open(
            transfer,
            protect=self.session.prot == "P",
            protection_required=self.protection_required,
        )

    def ftp_REST(self, position: str) -> Reply:
        """RFC 3659 REST STREAM: the next RETR, STOR or APPE starts there."""
        if not position.isdigit():
            return Reply(501, "REST needs a byte offset")
        self.session.restart = int(position)
        return Reply(
            350, f"Restarting at {self.session.restart}; send RETR, STOR or APPE"
        )

    def ftp_ABOR(self) -> Optional[Reply]:
        """
        RFC 959 ABOR: during a transfer, close its data connection; the
        transfer replies 426, then ABOR replies 226.  An aborted upload
        leaves no object and is not kept for a resume.  With nothing
        running, 225.
        """
        transfer = self.transfer
        if transfer is None:
            return Reply(225, "No transfer to abort")
        transfer.after_reply.append("226 ABOR successful")
        transfer.cancel(client_gone=False)
        return None

    async def ftp_RETR(self, path: str) -> Reply:
        transfer = self._current_transfer()
        fs = self.fs  # the session may end before the transfer does
        offset = self.session.take_restart()
        segments = self.resolve(path)
        try:
            reader = await fs.open_reader(segments, offset)
        except Exception:
            self.data.close()
            raise
        # Why the download ended early, for its audit event (the file
        # system's own errors it knows already).
        stopped: Optional[BaseException] = None
        try:
            channel = await self._data_channel(transfer)
            self.sendLine(
                f"150 Opening BINARY mode data connection for {path} "
                f"({reader.length} bytes)"
            )
            await self.data.ready(channel)
            sending = reader.send(channel)
            transfer.counter = lambda: reader.sent
            try:
                await sending
                end = await channel.closed()
                if end is not None:
                    raise vfs.TransferStopped(str(end))
            except BaseException as e:
                channel.abort()
                stopped = e
                if transfer.aborted:
                    raise Reply(426, "Transfer aborted") from None
                raise
        except BaseException as e:
            stopped = stopped or e
            raise
        finally:
            reader.close(stopped)
        return Reply(226, "Transfer complete")

    def ftp_STOR(self, path: str) -> Awaitable[Reply]:
        return self._store(path, offset=self.session.take_restart(), append=False)

    def ftp_APPE(self, path: str) -> Awaitable[Reply]:
        self.session.take_restart()
        return self._store(path, offset=0, append=True)

    def ftp_STOU(self, path: str) -> Awaitable[Reply]:
        """RFC 959 / 1123 4.1.2.9: store under a new unique name, told in 150."""
        self.session.take_restart()
        name = f"{path or 'file'}.{uuid.uuid4().hex[:12]}"
        return self._store(name, offset=0, append=False, unique=True)

    async def _store(
        self, path: str, offset: int, append: bool, unique: bool = False
    ) -> Reply:
        transfer = self._current_transfer()
        fs = self.fs  # the session may end before the transfer does
        segments = self.resolve(path)
        try:
            upload = await fs.open_upload(
                segments, offset=offset, append=append, size_hint=self.session.allocated
            )
        except Exception:
            self.data.close()
            raise
        finally:
            self.session.allocated = None
        transfer.counter = lambda: upload.received
        try:
            channel = await self._data_channel(transfer)
            if unique:
                self.sendLine(f"150 FILE: {vfs.display(segments)}")
            else:
                self.sendLine(
                    f"150 Ok to send data for {path} (from byte {upload.base})"
                )
            await self.data.ready(channel)
        except BaseException:
            await upload.abort()
            raise
        await self._receive(transfer, channel, upload)
        # After a store failure this raises it, translated.
        await upload.commit()
        return Reply(226, "Transfer complete")

    async def _receive(
        self,
        transfer: ActiveTransfer,
        channel: DataChannel,
        upload: IUpload,
    ) -> None:
        """
        Feed the data connection into C{upload} until it ends.  Returns when
        the upload may be committed (or has failed: the commit says how).

        @raise Reply: 426, the transfer was aborted (nothing is stored) or
            the client went away (what arrived is kept for a resume).
        """
        stopped: Optional[vfs.TransferStopped] = None
        arrivals = _Arrivals(upload, self.reactor)
        try:
            # The upload pauses the channel for the store and the user's
            # rate, and stops it (the reply then says why) if the store fails.
            await channel.receive(arrivals)
        except vfs.TransferStopped as e:
            stopped = e
        if stopped is None and not transfer.client_gone:
            quiet = self.reactor.seconds() - arrivals.last
            if await self._client_left(transfer, quiet):
                transfer.client_gone = True
        if upload.failed:
            return
        if transfer.aborted:
            await upload.abort()
            raise Reply(426, "Transfer aborted; nothing was stored")
        if stopped is not None or transfer.client_gone:
            kept = await upload.interrupt(transfer.why)
            hint = f"; {kept} bytes kept: resume with REST {kept}" if kept else ""
            raise Reply(426, f"Connection closed; transfer aborted{hint}")

    async def _client_left(self, transfer: ActiveTransfer, quiet: float) -> bool:
        """
        Whether the client is gone although its data connection ended
        cleanly: a client killed mid-upload closes both its connections,
        and the data connection's end looks like an end of file.

        The kernel's state of the control connection (L{control_closed})
        holds a killed client's FIN whether or not the reactor has read it.
        An end in doubt (the data connection quiet for over C{eof_quiet}
        before it ended: a client that finishes its file closes right after
        its last bytes), or one the kernel cannot be asked about (not
        Linux), waits C{eof_grace} (20 ms) and asks again; a control
        connection lost meanwhile cuts the wait short.  Any other end is
        committed at once: every upload used to wait the 20 ms.

        Measured on this project's 2-core machine, idle and with two more
        processes spinning on its cores: of ftplib clients killed while
        sending, killed after 50 ms idle (30 of each), and lftp killed in
        the middle of a 1 MB/s upload (180), none was committed.  Killed
        while sending, the control connection's end is read or in the
        kernel by the data's end (which queues behind the unsent bytes).
        Killed while idle, the data connection usually ends first (a dying
        process closes its descriptors last first; the gateway, woken by
        that end, may hold the CPU the dying process needs to close the
        other), and the control connection's end came up to 33 ms later
        under load: the doubt's wait lets it.  (With doubt from 0.5 ms of
        quiet, 4 lftp runs in 120 were missed.)  What is not recognised, a
        client killed within C{eof_quiet} of its last bytes with none left
        unsent and its control connection's end late, is committed with
        the bytes it sent, as a disk FTP server keeps them, to be resumed
        (SIZE, REST, APPE).
        """
        closed = control_closed(self.transport)
        if closed or transfer.client_gone:
            return True
        if closed is None or quiet > self.factory.eof_quiet:
            transfer.waiting = deferLater(
                self.reactor, self.factory.eof_grace, lambda: None
            )
            try:
                await transfer.waiting
            except CancelledError:
                pass  # the control connection ended: cancel() says so
            finally:
                transfer.waiting = None
            closed = control_closed(self.transport)
        return bool(closed) or transfer.client_gone

    async def _list(
        self, path: str, format_line: LineFormat, mlsd: bool = False
    ) -> Reply:
        transfer = self._current_transfer()
        if not mlsd:
            words = path.split()
            while words and words[0].startswith("-"):
                words.pop(0)  # ls options such as -la: ignored
            path = " ".join(words) if words else ""
        segments = self.resolve(path)
        fs = self.fs
        try:
            if mlsd and segments:
                entry = await fs.stat(segments)
                if not entry.is_dir:
                    # RFC 3659 7.2.1: MLSD lists directories only.
                    raise Reply(501, f"{path}: not a directory")
            listing = fs.listing(segments)
            first = await listing.next_page()
        except Exception:
            self.data.close()
            raise
        try:
            count = await self._send_listing(transfer, listing, first, format_line)
        except BaseException as e:
            # Cut short: its audit event says so (after its last page, this
            # does nothing).
            listing.close(e)
            raise
        return Reply(226, f"Directory send OK ({count} entries)")

    async def _send_listing(
        self,
        transfer: ActiveTransfer,
        listing: IListing,
        first: Optional[list[vfs.Entry]],
        format_line: LineFormat,
    ) -> int:
        """Send C{listing} (its C{first} page read) over the data connection."""
        fs = self.fs
        channel = await self._data_channel(transfer)
        self.sendLine("150 Here comes the directory listing")
        await self.data.ready(channel)
        now = self.reactor.seconds()
        names = self.names
        sender = ListingSender(
            listing,
            first or [],
            channel,
            lambda e: format_line(e, names.shown_entry(e), fs, now),
            names.encode,
        )
        transfer.counter = lambda: sender.count
        try:
            await sender.start()
            end = await channel.closed()
            if end is not None:
                raise vfs.TransferStopped(str(end))
        except BaseException:
            channel.abort()
            if transfer.aborted:
                raise Reply(426, "Transfer aborted") from None
            raise
        return sender.count

    def ftp_LIST(self, path: str) -> Awaitable[Reply]:
        return self._list(
            path,
            lambda _, shown, fs, now: format_list_line(
                shown, fs.permissions, fs.user, now
            ),
        )

    def ftp_NLST(self, path: str) -> Awaitable[Reply]:
        return self._list(path, lambda _, shown, fs, now: shown.name)

    def ftp_MLSD(self, path: str) -> Awaitable[Reply]:
        segments = self.resolve(path)
        facts = set(self.session.facts)

        def line(
            entry: vfs.Entry, shown: vfs.Entry, fs: IFileSystem, now: float
        ) -> str:
            key = fs.dir_prefix(segments) + entry.name + ("/" if entry.is_dir else "")
            return f"{format_facts(entry, key, fs.permissions, facts)} {shown.name}"

        return self._list(path, line, mlsd=True)
