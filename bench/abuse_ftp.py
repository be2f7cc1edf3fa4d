"""
The FTP attacks of bench/abuse.py (issue 12, items 4, 5 and 6).

Each runs for at most C{seconds} from its own loopback address, holds what
it opened until then, closes everything it opened before it returns, and
returns one line saying what it managed to do, so that a gateway which
refused the attack (stopped reading, closed, answered 421) reads as that
rather than as a fast gateway.
"""

from __future__ import annotations

import re
import select
import selectors
import socket
import threading
import time
from dataclasses import dataclass, field

from bench.abuse_gateway import USER, Gateway, MiB, connect_from
from bench.abuse_probe import FTPControl, ReplyTimeout, log_in

_FINAL_LINE = re.compile(rb"^(\d{3}) ")
_PASV = re.compile(r"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)")


def hold(deadline: float) -> None:
    """Keep what the attack opened until C{deadline}: the attack's time."""
    threading.Event().wait(max(0.0, deadline - time.monotonic()))


def help_flood(gateway: Gateway, source: str, seconds: float) -> str:
    """
    Item 4: one connection that never logs in and never reads sends HELP
    as fast as the gateway takes it.  Its receive buffer is made small so
    the replies pile up in the gateway, not in this host's socket buffers.
    """
    deadline = time.monotonic() + seconds
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sent, outcome = 0, "still open at the end"
    #: Bytes sent by one second before the deadline.
    before_last: int | None = None
    try:
        sock.settimeout(10)
        sock.bind((source, 0))
        sock.connect(("127.0.0.1", gateway.ftp_port))
        sock.setblocking(False)
        block = memoryview(b"HELP\r\n" * 4096)
        pending = block
        while (now := time.monotonic()) < deadline:
            if before_last is None and now >= deadline - 1:
                before_last = sent
            _, writable, _ = select.select([], [sock], [], min(0.1, deadline - now))
            if not writable:
                continue
            try:
                n = sock.send(pending)
            except BlockingIOError:
                continue
            except OSError as e:
                outcome = f"closed by the gateway ({type(e).__name__})"
                break
            sent += n
            pending = pending[n:] or block
    finally:
        sock.close()
    lately = sent - (sent if before_last is None else before_last)
    return (
        f"{sent / MiB:.1f} MiB of HELP sent ({sent // 6} lines, "
        f"{lately / 1024:.0f} KiB in the last second); {outcome}"
    )


def idle_pasv(gateway: Gateway, source: str, seconds: float, count: int = 400) -> str:
    """
    Item 5: a user logged in over explicit FTPS with PROT P makes C{count}
    passive data connections (PASV, then connect, and no TLS handshake: the
    case the issue found leaking) and never transfers on any of them, QUITs,
    and keeps the data connections open until the end; reports how many the
    gateway has closed before the QUIT and by the end.
    """
    deadline = time.monotonic() + seconds
    data: list[socket.socket] = []
    refused, failed, last = 0, 0, ""
    control: FTPControl | None = None
    quit_reply = "not sent"
    before_quit = -1
    try:
        control = log_in(source, gateway.ftp_port, min(10.0, seconds), tls=True)
        control.expect("PBSZ 0", 200, deadline)
        control.expect("PROT P", 200, deadline)
        for _ in range(count):
            if time.monotonic() >= deadline:
                break
            control.send("PASV")
            code, text = control.reply(deadline)
            found = _PASV.search(text)
            if code != 227 or not found:
                refused, last = refused + 1, text
                continue
            port = int(found.group(5)) * 256 + int(found.group(6))
            try:
                data.append(connect_from(source, port, 5))
            except OSError as e:
                failed, last = failed + 1, f"{type(e).__name__}: {e}"
            # A round trip before the next PASV, so the gateway has taken
            # this connection off its listener rather than dropping it
            # unaccepted with the listener (as a client's keepalive would).
            control.expect("NOOP", 200, deadline)
        before_quit = sum(1 for s in data if _closed_by_peer(s))
        control.send("QUIT")
        try:
            quit_reply = control.reply(min(deadline, time.monotonic() + 5))[1][:3]
        except (ReplyTimeout, OSError) as e:
            quit_reply = type(e).__name__
        hold(deadline)
        closed = sum(1 for s in data if _closed_by_peer(s))
    except (ReplyTimeout, OSError) as e:
        closed, last = sum(1 for s in data if _closed_by_peer(s)), repr(e)
    finally:
        if control is not None:
            control.close()
        for s in data:
            s.close()
    note = (
        f"PROT P, {len(data)} data connections made; the gateway had closed "
        f"{before_quit} before QUIT ({quit_reply}), {closed} by the end"
    )
    if refused or failed:
        note += f"; {refused} PASV refused, {failed} connects failed ({last[:60]})"
    return note


def _closed_by_peer(sock: socket.socket) -> bool:
    """Whether the gateway has closed this (never used) data connection."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@dataclass(eq=False)
class _Guesser:
    """One connection of the password attack."""

    sock: socket.socket
    #: Its banner has come; it may guess.
    greeted: bool = False
    #: A USER and PASS pair is out and its PASS not answered yet.
    guessing: bool = False
    buffer: bytes = b""


@dataclass
class _Tally:
    connects: int = 0
    attempts: int = 0
    rejected: int = 0
    refused: int = 0
    #: The first 421 line, to say what refused them.
    refused_as: str = ""
    closed: int = 0
    other: dict[str, int] = field(default_factory=dict)


def wrong_passwords(
    gateway: Gateway, source: str, seconds: float, parallel: int = 300
) -> str:
    """
    Item 6: C{parallel} connections from one address; once all have their
    banner (or after a quarter of the time), each sends USER and a wrong
    PASS in one write, all at once, and again after every 530; one the
    gateway refuses or closes is replaced after 1 s.  Bounded by time, by
    C{parallel} x 100 guesses and by C{parallel} x C{seconds} connections.
    """
    deadline = time.monotonic() + seconds
    go_at = time.monotonic() + seconds / 4
    max_attempts, max_connects = parallel * 100, int(parallel * max(seconds, 1))
    tally = _Tally()
    selector = selectors.DefaultSelector()
    due: list[float] = [time.monotonic()] * parallel
    guessers: set[_Guesser] = set()
    go = False
    try:
        while (now := time.monotonic()) < deadline:
            while due and due[0] <= now and tally.connects < max_connects:
                due.pop(0)
                guessers.add(_open_guesser(selector, source, gateway.ftp_port))
                tally.connects += 1
            for key, _ in selector.select(timeout=min(0.1, deadline - now)):
                guesser: _Guesser = key.data
                if not _advance(guesser, tally, go and tally.attempts < max_attempts):
                    selector.unregister(guesser.sock)
                    guesser.sock.close()
                    guessers.discard(guesser)
                    due.append(time.monotonic() + 1.0)
            if not go and (
                all(g.greeted for g in guessers) or time.monotonic() >= go_at
            ):
                go = True
                for guesser in [g for g in guessers if g.greeted]:
                    _guess(guesser, tally)
        waiting = sum(1 for g in guessers if g.guessing)
        ungreeted = sum(1 for g in guessers if not g.greeted)
    finally:
        for guesser in guessers:
            guesser.sock.close()
        selector.close()
    others = ", ".join(f"{n} x {c}" for c, n in sorted(tally.other.items()))
    return (
        f"{tally.attempts} guesses on {tally.connects} connections: "
        f"{tally.rejected} answered 530, {waiting} unanswered at the end; "
        f"{ungreeted} connections without a banner at the end; "
        f"{tally.refused} refused ({tally.refused_as[:50]!r}), "
        f"{tally.closed} closed by the gateway" + (f"; {others}" if others else "")
    )


def _open_guesser(selector: selectors.BaseSelector, source: str, port: int) -> _Guesser:
    """
    A connection started without waiting: 300 blocking connects would be
    serialised behind the gateway's accept backlog.
    """
    sock = socket.socket()
    sock.setblocking(False)
    sock.bind((source, 0))
    sock.connect_ex(("127.0.0.1", port))
    guesser = _Guesser(sock)
    selector.register(sock, selectors.EVENT_READ, guesser)
    return guesser


def _guess(guesser: _Guesser, tally: _Tally) -> bool:
    """Send USER and a wrong PASS together; False when the send fails."""
    tally.attempts += 1
    guesser.guessing = True
    try:
        guesser.sock.send(f"USER {USER}\r\nPASS wrong-{tally.attempts}\r\n".encode())
    except OSError:
        tally.closed += 1
        return False
    return True


def _advance(guesser: _Guesser, tally: _Tally, may_guess: bool) -> bool:
    """Read what arrived and answer it; False when the connection is done."""
    try:
        data = guesser.sock.recv(65536)
    except BlockingIOError:
        return True
    except OSError:
        data = b""
    if not data:
        tally.closed += 1
        return False
    guesser.buffer += data
    while b"\r\n" in guesser.buffer:
        line, guesser.buffer = guesser.buffer.split(b"\r\n", 1)
        final = _FINAL_LINE.match(line)
        if not final:
            continue
        code = final.group(1).decode()
        if code == "421":
            tally.refused += 1
            tally.refused_as = tally.refused_as or line.decode("utf-8", "replace")
            return False
        if code == "220" and not guesser.greeted:
            guesser.greeted = True
            if may_guess and not _guess(guesser, tally):
                return False
        elif code == "530" and guesser.guessing:
            tally.rejected += 1
            guesser.guessing = False
            if may_guess and not _guess(guesser, tally):
                return False
        elif code != "331":
            tally.other[code] = tally.other.get(code, 0) + 1
    return True
