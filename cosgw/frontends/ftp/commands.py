"""
The dispatch table: every command the FTP frontend knows, its handler, who
may send it (its L{Access} column in the session's admission table),
whether it takes an argument, and HELP's syntax line.

A command not in the table is answered 502 once the session admits it
(before login: 530).  The X* commands are RFC 775's old names.
"""

from __future__ import annotations

from collections.abc import Mapping

from cosgw.frontends.ftp.context import Arg, Command
from cosgw.frontends.ftp.file_commands import FileCommands as Files
from cosgw.frontends.ftp.hash_commands import HashCommands as Hashes
from cosgw.frontends.ftp.info_commands import InfoCommands as Info
from cosgw.frontends.ftp.login_commands import LoginCommands as Login
from cosgw.frontends.ftp.ports import PortCommands as Ports
from cosgw.frontends.ftp.session import Access
from cosgw.frontends.ftp.transfers import TransferCommands as Transfers

ANYONE, USER, PASSWORD = Access.ANYONE, Access.USER, Access.PASSWORD
RNTO, LOGGED_IN = Access.RENAME_TARGET, Access.LOGGED_IN
NONE, OPTIONAL, REQUIRED = Arg.NONE, Arg.OPTIONAL, Arg.REQUIRED

# fmt: off
COMMANDS: Mapping[str, Command] = {
    # login and FTPS (RFC 959, RFC 4217)
    "USER": Command(Login.ftp_USER, USER, OPTIONAL, "USER <name>"),
    "PASS": Command(Login.ftp_PASS, PASSWORD, OPTIONAL, "PASS <password>"),
    "REIN": Command(Login.ftp_REIN, LOGGED_IN, NONE, "REIN (log out, keep the connection)"),
    "QUIT": Command(Login.ftp_QUIT, ANYONE, NONE, "QUIT"),
    "AUTH": Command(Login.ftp_AUTH, ANYONE, OPTIONAL, "AUTH TLS (encrypt the control connection, RFC 4217)"),
    "PBSZ": Command(Login.ftp_PBSZ, ANYONE, OPTIONAL, "PBSZ 0"),
    "PROT": Command(Login.ftp_PROT, ANYONE, OPTIONAL, "PROT C | P (clear or private data connections)"),
    "CCC": Command(Login.ftp_CCC, ANYONE, NONE, "CCC (refused: the control connection stays encrypted)"),
    # information and settings
    "NOOP": Command(Info.ftp_NOOP, ANYONE, OPTIONAL, "NOOP"),
    "FEAT": Command(Info.ftp_FEAT, ANYONE, NONE, "FEAT (list the features)"),
    "OPTS": Command(Info.ftp_OPTS, ANYONE, OPTIONAL, "OPTS UTF8 ON | MLST <facts> | HASH [<algorithm>]"),
    "HELP": Command(Info.ftp_HELP, ANYONE, OPTIONAL, "HELP [<command>]"),
    "CLNT": Command(Info.ftp_CLNT, ANYONE, OPTIONAL, "CLNT <client name>"),
    "SYST": Command(Info.ftp_SYST, LOGGED_IN, NONE, "SYST"),
    "STAT": Command(Info.ftp_STAT, LOGGED_IN, OPTIONAL, "STAT [<path>]"),
    "SITE": Command(Info.ftp_SITE, LOGGED_IN, OPTIONAL, "SITE HELP | CHMOD <mode> <path> | CRC64 <path>"),
    "TYPE": Command(Info.ftp_TYPE, LOGGED_IN, OPTIONAL, "TYPE I | A"),
    "STRU": Command(Info.ftp_STRU, LOGGED_IN, REQUIRED, "STRU F"),
    "MODE": Command(Info.ftp_MODE, LOGGED_IN, REQUIRED, "MODE S"),
    "ALLO": Command(Info.ftp_ALLO, LOGGED_IN, OPTIONAL, "ALLO <size> (announce an upload's size)"),
    # navigation and files
    "PWD": Command(Files.ftp_PWD, LOGGED_IN, NONE, "PWD"),
    "XPWD": Command(Files.ftp_XPWD, LOGGED_IN, NONE, "XPWD (PWD)"),
    "CWD": Command(Files.ftp_CWD, LOGGED_IN, OPTIONAL, "CWD <path>", default="/"),
    "XCWD": Command(Files.ftp_XCWD, LOGGED_IN, OPTIONAL, "XCWD <path> (CWD)", default="/"),
    "CDUP": Command(Files.ftp_CDUP, LOGGED_IN, NONE, "CDUP (go to the parent directory)"),
    "XCUP": Command(Files.ftp_XCUP, LOGGED_IN, NONE, "XCUP (CDUP)"),
    "MKD": Command(Files.ftp_MKD, LOGGED_IN, REQUIRED, "MKD <path>"),
    "XMKD": Command(Files.ftp_XMKD, LOGGED_IN, REQUIRED, "XMKD <path> (MKD)"),
    "RMD": Command(Files.ftp_RMD, LOGGED_IN, REQUIRED, "RMD <path>"),
    "XRMD": Command(Files.ftp_XRMD, LOGGED_IN, REQUIRED, "XRMD <path> (RMD)"),
    "DELE": Command(Files.ftp_DELE, LOGGED_IN, REQUIRED, "DELE <path>"),
    "RNFR": Command(Files.ftp_RNFR, LOGGED_IN, REQUIRED, "RNFR <path>"),
    "RNTO": Command(Files.ftp_RNTO, RNTO, REQUIRED, "RNTO <path>"),
    "SIZE": Command(Files.ftp_SIZE, LOGGED_IN, REQUIRED, "SIZE <path>"),
    "MDTM": Command(Files.ftp_MDTM, LOGGED_IN, REQUIRED, "MDTM <path>"),
    "MFMT": Command(Files.ftp_MFMT, LOGGED_IN, REQUIRED, "MFMT <YYYYMMDDHHMMSS> <path> (set the modification time)"),
    "MLST": Command(Files.ftp_MLST, LOGGED_IN, OPTIONAL, "MLST [<path>]"),
    # digests
    "HASH": Command(Hashes.ftp_HASH, LOGGED_IN, REQUIRED, "HASH <path> (digest of a file, see OPTS HASH and RANG)"),
    "RANG": Command(Hashes.ftp_RANG, LOGGED_IN, REQUIRED, "RANG <start> <end> (byte range for the next HASH)"),
    "XCRC": Command(Hashes.ftp_XCRC, LOGGED_IN, REQUIRED, "XCRC <path> [<start> <end>] (CRC-32)"),
    "XMD5": Command(Hashes.ftp_XMD5, LOGGED_IN, REQUIRED, "XMD5 <path> [<start> <end>]"),
    "XSHA1": Command(Hashes.ftp_XSHA1, LOGGED_IN, REQUIRED, "XSHA1 <path> [<start> <end>]"),
    "XSHA256": Command(Hashes.ftp_XSHA256, LOGGED_IN, REQUIRED, "XSHA256 <path> [<start> <end>]"),
    # data connections
    "PASV": Command(Ports.ftp_PASV, LOGGED_IN, NONE, "PASV"),
    "EPSV": Command(Ports.ftp_EPSV, LOGGED_IN, OPTIONAL, "EPSV [<proto> | ALL]"),
    "PORT": Command(Ports.ftp_PORT, LOGGED_IN, REQUIRED, "PORT <h1,h2,h3,h4,p1,p2>"),
    "EPRT": Command(Ports.ftp_EPRT, LOGGED_IN, REQUIRED, "EPRT |<proto>|<address>|<port>|"),
    # transfers (run detached: see the protocol's command queue)
    "REST": Command(Transfers.ftp_REST, LOGGED_IN, REQUIRED, "REST <offset> (restart the next RETR, STOR or APPE)"),
    "ABOR": Command(Transfers.ftp_ABOR, LOGGED_IN, NONE, "ABOR (abort the running transfer)"),
    "RETR": Command(Transfers.ftp_RETR, LOGGED_IN, REQUIRED, "RETR <path>"),
    "STOR": Command(Transfers.ftp_STOR, LOGGED_IN, REQUIRED, "STOR <path>"),
    "APPE": Command(Transfers.ftp_APPE, LOGGED_IN, REQUIRED, "APPE <path> (append to a file)"),
    "STOU": Command(Transfers.ftp_STOU, LOGGED_IN, OPTIONAL, "STOU [<name>] (store under a new unique name)"),
    "LIST": Command(Transfers.ftp_LIST, LOGGED_IN, OPTIONAL, "LIST [<path>]"),
    "NLST": Command(Transfers.ftp_NLST, LOGGED_IN, OPTIONAL, "NLST [<path>]"),
    "MLSD": Command(Transfers.ftp_MLSD, LOGGED_IN, OPTIONAL, "MLSD [<path>]"),
}
# fmt: on
