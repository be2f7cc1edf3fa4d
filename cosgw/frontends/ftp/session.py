"""
The state of one FTP control connection, written down: where it is in the
login and rename sequences (L{State}, moved only through L{TRANSITIONS}),
which commands each state admits (L{ADMISSION}), and the parameters earlier
commands set for later ones (L{Session}).

Transitions (Twisted's FTP names the first four states UNAUTH, INAUTH,
AUTHED and RENAMING)::

    state        event                                    next state
    CONNECTED    USER accepted                            USER_GIVEN
    USER_GIVEN   PASS accepted                            LOGGED_IN
    USER_GIVEN   PASS refused                             CONNECTED
    LOGGED_IN    USER accepted (a new login)              USER_GIVEN
    LOGGED_IN    RNFR accepted                            RENAMING
    RENAMING     RNTO, or any command not RNTO (*)        LOGGED_IN
    LOGGED_IN    REIN                                     CONNECTED
    the above    QUIT                                     QUITTING
    any          connection lost                          CLOSED

Admission: every command has an L{Access} class, its column here; a state
runs it or refuses it with the reply in its cell::

                 ANYONE   USER     PASSWORD  RENAME_TARGET  LOGGED_IN
    CONNECTED    run      run      503       530            530
    USER_GIVEN   run      503      run       503            503
    LOGGED_IN    run      run      503       run            run
    RENAMING     run      (*)      (*)       run            (*)

(*) RFC 959 wants RNTO right after RNFR: in RENAMING, a command other than
RNTO and the ones anyone may send (NOOP, ...) ends the rename, and is then
admitted as in LOGGED_IN (L{Session.admit}).  QUITTING and CLOSED read no
more lines.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Optional

from cosgw.frontends.ftp.facts import DEFAULT_FACTS
from cosgw.frontends.ftp.replies import Reply
from cosgw.interfaces import IFileSystem


class State(enum.Enum):
    """Where a control connection is in its life."""

    #: Greeted; no user named yet.
    CONNECTED = "connected"
    #: USER accepted; PASS expected.
    USER_GIVEN = "user given"
    #: A user is logged in.
    LOGGED_IN = "logged in"
    #: Logged in, and RNFR accepted: RNTO expected.
    RENAMING = "renaming"
    #: QUIT answered: the connection is closing; lines are ignored.
    QUITTING = "quitting"
    #: The connection is gone.
    CLOSED = "closed"


class Event(enum.Enum):
    """What moves a session from one state to another."""

    USER_ACCEPTED = "USER accepted"
    LOGGED_IN = "PASS accepted"
    LOGIN_REFUSED = "PASS refused"
    RENAME_STARTED = "RNFR accepted"
    RENAME_ENDED = "RNTO, or a command that is not RNTO"
    REINITIALIZED = "REIN"
    QUIT = "QUIT"
    LOST = "connection lost"


_LIVE = (State.CONNECTED, State.USER_GIVEN, State.LOGGED_IN, State.RENAMING)

#: (state, event) -> next state.  Once QUITTING or CLOSED, only LOST moves
#: the state (a login may finish after the client left); any other pair not
#: listed is a bug, and L{Session.advance} says so.
TRANSITIONS: Mapping[tuple[State, Event], State] = {
    (State.CONNECTED, Event.USER_ACCEPTED): State.USER_GIVEN,
    (State.LOGGED_IN, Event.USER_ACCEPTED): State.USER_GIVEN,
    (State.USER_GIVEN, Event.LOGGED_IN): State.LOGGED_IN,
    (State.USER_GIVEN, Event.LOGIN_REFUSED): State.CONNECTED,
    (State.LOGGED_IN, Event.RENAME_STARTED): State.RENAMING,
    (State.RENAMING, Event.RENAME_ENDED): State.LOGGED_IN,
    (State.LOGGED_IN, Event.RENAME_ENDED): State.LOGGED_IN,  # RNTO without RNFR
    (State.LOGGED_IN, Event.REINITIALIZED): State.CONNECTED,
    **{(state, Event.QUIT): State.QUITTING for state in _LIVE},
    **{(state, Event.LOST): State.CLOSED for state in State},
}


class Access(enum.Enum):
    """Who may send a command: its column in L{ADMISSION}."""

    #: Anyone, at any time (FEAT, QUIT, OPTS, NOOP, HELP, CLNT and FTPS's
    #: AUTH, PBSZ, PROT, CCC).
    ANYONE = "anyone"
    #: USER.
    USER = "user"
    #: PASS.
    PASSWORD = "password"
    #: RNTO: a logged-in user, and it does not end a rename.
    RENAME_TARGET = "rename target"
    #: A logged-in user: every other command, and unknown ones.
    LOGGED_IN = "logged in"


_LOGIN_FIRST = Reply(530, "Please login with USER and PASS")
_PASS_FIRST = Reply(503, "PASS required after USER")
_LOGGED_IN_ALREADY = Reply(503, "Already logged in")

#: state -> access -> None (the command runs) or the reply refusing it.
#: QUITTING and CLOSED have no row: the protocol reads no more lines then.
ADMISSION: Mapping[State, Mapping[Access, Optional[Reply]]] = {
    State.CONNECTED: {
        Access.ANYONE: None,
        Access.USER: None,
        Access.PASSWORD: Reply(503, "Login with USER first"),
        Access.RENAME_TARGET: _LOGIN_FIRST,
        Access.LOGGED_IN: _LOGIN_FIRST,
    },
    State.USER_GIVEN: {
        Access.ANYONE: None,
        Access.USER: _PASS_FIRST,
        Access.PASSWORD: None,
        Access.RENAME_TARGET: _PASS_FIRST,
        Access.LOGGED_IN: _PASS_FIRST,
    },
    State.LOGGED_IN: {
        Access.ANYONE: None,
        Access.USER: None,
        Access.PASSWORD: _LOGGED_IN_ALREADY,
        Access.RENAME_TARGET: None,
        Access.LOGGED_IN: None,
    },
    State.RENAMING: {
        # Only ANYONE and RENAME_TARGET commands meet this row: the others
        # end the rename first, and meet LOGGED_IN's.
        Access.ANYONE: None,
        Access.USER: None,
        Access.PASSWORD: _LOGGED_IN_ALREADY,
        Access.RENAME_TARGET: None,
        Access.LOGGED_IN: None,
    },
}


class InvalidTransition(Exception):
    """An event the session's state has no transition for: a bug."""


#: The hash algorithm of HASH until OPTS HASH chooses another.
DEFAULT_HASH = "SHA-256"


@dataclass
class Session:
    """
    One control connection's session: its state, the logged-in user's
    file system, and what earlier commands set for later ones.  REIN puts
    most of it back (L{reinitialize}); TYPE, EPSV ALL and the TLS of the
    control connection stay.
    """

    state: State = State.CONNECTED
    #: USER's name while PASS is awaited.
    pending_user: Optional[str] = None
    #: The logged-in user, their file system and the logout ending it.
    user: Optional[str] = None
    fs: Optional[IFileSystem] = None
    logout: Optional[Callable[[], None]] = None
    #: CWD's directory, as segments below the home.
    working_directory: list[str] = field(default_factory=list)
    #: REST: where the next RETR, STOR or APPE starts.
    restart: int = 0
    #: ALLO: the announced size of the next upload.
    allocated: Optional[int] = None
    #: TYPE I (True) or A; A moves bytes unchanged too.
    binary: bool = True
    #: OPTS HASH and RANG: HASH's algorithm and the range of the next HASH.
    hash_algorithm: str = DEFAULT_HASH
    hash_range: Optional[tuple[int, int]] = None
    #: OPTS MLST: the facts MLST and MLSD give.
    facts: set[str] = field(default_factory=lambda: set(DEFAULT_FACTS))
    #: RFC 4217: the control connection is encrypted, PBSZ was given, and
    #: the data protection level (C clear, P private).
    secure: bool = False
    pbsz: bool = False
    prot: str = "C"
    #: RNFR's path, while RENAMING.
    rename_from: Optional[list[str]] = None
    #: RFC 2428 EPSV ALL: only EPSV may set up data connections from now on.
    epsv_all: bool = False
    #: Whether the logged-in user must use PROT P, as the rules said at the
    #: login (None before one): a reload changes them for later logins.
    prot_required: Optional[bool] = None

    @property
    def logged_in(self) -> bool:
        return self.state in (State.LOGGED_IN, State.RENAMING)

    @property
    def over(self) -> bool:
        """Whether the connection is closing or gone."""
        return self.state in (State.QUITTING, State.CLOSED)

    def advance(self, event: Event) -> None:
        """
        Move to the state L{TRANSITIONS} gives for C{event}.

        @raise InvalidTransition: the table has no such move.
        """
        if self.over and event is not Event.LOST:
            return
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise InvalidTransition(f"{event.value} in {self.state.value}") from None

    def admit(self, access: Access) -> Optional[Reply]:
        """
        Whether a command of C{access} may run now: None, or the reply
        that refuses it.  A command that is neither RNTO nor one anyone may
        send ends a rename first.
        """
        if self.state is State.RENAMING and access not in (
            Access.ANYONE,
            Access.RENAME_TARGET,
        ):
            self.take_rename_source()
        return ADMISSION[self.state][access]

    def take_restart(self) -> int:
        """REST's offset, which applies to one transfer only."""
        offset, self.restart = self.restart, 0
        return offset

    def start_rename(self, source: list[str]) -> None:
        self.rename_from = source
        self.advance(Event.RENAME_STARTED)

    def take_rename_source(self) -> Optional[list[str]]:
        """End a rename; RNFR's path, or None if there was no RNFR."""
        source, self.rename_from = self.rename_from, None
        self.advance(Event.RENAME_ENDED)
        return source

    def name_user(self, name: str) -> None:
        self.pending_user = name
        self.advance(Event.USER_ACCEPTED)

    def take_pending_user(self) -> str:
        name, self.pending_user = self.pending_user, None
        assert name is not None, "PASS is admitted after USER only"
        return name

    def log_in(self, fs: IFileSystem, logout: Callable[[], None]) -> None:
        self.end_login()
        self.fs, self.logout, self.user = fs, logout, fs.user
        self.working_directory = []
        self.advance(Event.LOGGED_IN)

    def end_login(self) -> None:
        """Give the user's session back (REIN, a new login, the end)."""
        logout, self.logout, self.fs = self.logout, None, None
        if logout is not None:
            logout()

    def reinitialize(self, implicit_tls: bool) -> None:
        """
        REIN: back to a new session.  TLS stays on, since it cannot be
        stopped, but PBSZ and PROT must be given again (unless the
        connection is implicit FTPS, whose data is private from the start).
        """
        self.end_login()
        self.user = None
        self.prot_required = None
        self.advance(Event.REINITIALIZED)
        self.working_directory = []
        self.restart = 0
        self.rename_from = None
        self.allocated = None
        self.hash_range = None
        self.facts = set(DEFAULT_FACTS)
        self.hash_algorithm = DEFAULT_HASH
        if not implicit_tls:
            self.pbsz, self.prot = False, "C"
