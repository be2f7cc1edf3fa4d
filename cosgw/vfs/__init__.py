"""
A file system over an object store, one per logged-in user: the one door
through which every frontend (FTP, SFTP) reaches storage, so every rule
about names, homes, directories, permissions, quotas, rates and resumes
lives here once.

  - L{cosgw.vfs.names}: paths as segments below the home, confinement;
  - L{cosgw.vfs.filesystem}: L{ObjectFileSystem}, directories over
    prefixes, stat, rename, ...;
  - L{cosgw.vfs.reader}, L{cosgw.vfs.upload}, L{cosgw.vfs.editing}: the
    objects a frontend reads and writes files through, with the user's
    rules inside;
  - L{cosgw.vfs.opening}: SFTP's OPEN, its flags and checks;
  - L{cosgw.vfs.listing}, L{cosgw.vfs.mtimes} (and L{cosgw.vfs.timecache},
    what the gateway knows of them), L{cosgw.vfs.digests},
    L{cosgw.vfs.resume}, L{cosgw.vfs.renames}, L{cosgw.vfs.changes},
    L{cosgw.vfs.rates}, L{cosgw.vfs.directories} (what a name is in one
    request, and the directories a session knows): what they are made of;
  - L{cosgw.vfs.auditing}, L{cosgw.vfs.metering}: the session's audit
    events of every action, and the live record of every transfer handed
    out, emitted here so that no frontend can forget one;
  - L{cosgw.vfs.errors}: the L{FSError}s every frontend maps to its
    replies in one place.
"""

from cosgw.interfaces import Entry

# TransferStopped: the client went away, or was told to (FTP's ABOR), before
# a transfer finished.  Not a failure of the file system, so translate()
# passes it through; exported here so that frontends need nothing below.
from cosgw.transfer import RandomAccessSettings, TransferStopped
from cosgw.vfs.digests import DIGESTS
from cosgw.vfs.editing import FileMode, OpenFlags, RandomAccessFile
from cosgw.vfs.errors import (
    AlreadyExists,
    FileTooLarge,
    FSError,
    IntegrityFailure,
    InvalidName,
    InvalidOffset,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotSupported,
    PermissionDenied,
    QuotaExceeded,
    StoreFailure,
    WriteRefused,
    translate,
)
from cosgw.vfs.filesystem import ObjectFileSystem
from cosgw.vfs.listing import Listing
from cosgw.vfs.mtimes import client_mtime
from cosgw.vfs.names import (
    METADATA_PREFIX,
    MTIME_INDEX,
    check_name,
    display,
    home_prefix,
    is_hidden_key,
    is_reserved,
    resolve,
)
from cosgw.vfs.reader import Reader
from cosgw.vfs.resume import Resumable
from cosgw.vfs.upload import Upload

__all__ = [
    "DIGESTS",
    "METADATA_PREFIX",
    "MTIME_INDEX",
    "AlreadyExists",
    "Entry",
    "FSError",
    "FileMode",
    "FileTooLarge",
    "IntegrityFailure",
    "InvalidName",
    "InvalidOffset",
    "IsADirectory",
    "Listing",
    "NotADirectory",
    "NotEmpty",
    "NotFound",
    "NotSupported",
    "ObjectFileSystem",
    "OpenFlags",
    "PermissionDenied",
    "QuotaExceeded",
    "RandomAccessFile",
    "RandomAccessSettings",
    "Reader",
    "Resumable",
    "StoreFailure",
    "TransferStopped",
    "Upload",
    "WriteRefused",
    "check_name",
    "client_mtime",
    "display",
    "home_prefix",
    "is_hidden_key",
    "is_reserved",
    "resolve",
    "translate",
]
