"""
Protocol-independent streaming between a client connection and a store.

Flow control, in one paragraph.  A download (L{Download}) is a push
producer: it keeps at most C{read_ahead} chunks read from the store and
writes them to the consumer (the data connection) while the consumer has
not paused it; a slow client pauses it and the store stops being read.  An
upload (L{UploadWriter}) is the mirror image: the data connection is a push
producer writing into it, paused while C{parts_in_flight} parts are at the
store, so TCP pushes back on the client; memory per upload is bounded by
(parts in flight + 1) x part size, and all uploads share one budget for
their part buffers (L{UploadBuffers}), waiting their turn, paused, when it
is spent.  SFTP's reads and writes at offsets go through L{RangedReader}
and L{PositionalWriter}, which turn them into those sequential streams,
with a bounded L{Spool} for what cannot wait in memory.
Nothing here knows FTP or SFTP, permissions or paths: L{cosgw.vfs} hands
these to the frontends with a user's rules around them.

  - L{cosgw.transfer.upload}: the multipart upload writer and its states;
  - L{cosgw.transfer.parts}: part sizes within COS's limits;
  - L{cosgw.transfer.buffers}: the part buffers' shared budget;
  - L{cosgw.transfer.registry}: the uploads being written and those kept
    for a resume;
  - L{cosgw.transfer.download}: the download producer;
  - L{cosgw.transfer.reader}, L{cosgw.transfer.writer},
    L{cosgw.transfer.spool}: positional reads and writes;
  - L{cosgw.transfer.errors}: why a transfer stops short.
"""

from cosgw.transfer.buffers import UploadBuffers
from cosgw.transfer.download import Download, DownloadBuffers
from cosgw.transfer.errors import (
    QuotaReached,
    RewriteRefused,
    SpoolFull,
    TransferStopped,
    UploadTooLarge,
    log_cleanup_failure,
)
from cosgw.transfer.parts import (
    PART_GROWTH_SPAN,
    contiguous_parts,
    copy_ranges,
    max_stream_size,
    part_size_for,
)
from cosgw.transfer.reader import RangedReader
from cosgw.transfer.registry import UploadRegistry
from cosgw.transfer.settings import RandomAccessSettings, TransferSettings
from cosgw.transfer.spool import Spool
from cosgw.transfer.upload import UploadState, UploadWriter
from cosgw.transfer.writer import PositionalWriter

__all__ = [
    "PART_GROWTH_SPAN",
    "Download",
    "DownloadBuffers",
    "PositionalWriter",
    "QuotaReached",
    "RandomAccessSettings",
    "RangedReader",
    "RewriteRefused",
    "Spool",
    "SpoolFull",
    "TransferSettings",
    "TransferStopped",
    "log_cleanup_failure",
    "UploadRegistry",
    "UploadState",
    "UploadBuffers",
    "UploadTooLarge",
    "UploadWriter",
    "contiguous_parts",
    "copy_ranges",
    "max_stream_size",
    "part_size_for",
]
