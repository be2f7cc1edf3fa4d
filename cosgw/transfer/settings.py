"""How transfers use memory and the store."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from cosgw.transfer.buffers import UploadBuffers
from cosgw.transfer.download import DownloadBuffers
from cosgw.transfer.spool import SpoolBudget

MiB = 1024 * 1024


@dataclass(frozen=True)
class TransferSettings:
    """How transfers use memory and the store; built from the config."""

    part_size: int = 8 * MiB
    parts_in_flight: int = 4
    read_chunk: int = 1024 * 1024
    read_ahead: int = 2
    max_file_size: Optional[int] = None
    #: Keep an interrupted upload's stored parts so the client can resume
    #: it (REST n + STOR, APPE), instead of aborting them at once.
    resume_uploads: bool = True
    #: The part buffers of every upload of the gateway, one budget
    #: (C{upload_buffer_budget}); None: each upload is bounded only by its
    #: own parts in flight.  Shared, not copied, by C{dataclasses.replace}.
    buffers: Optional[UploadBuffers] = field(default=None, compare=False, repr=False)
    #: What every download of the gateway reads ahead of its client, one
    #: budget (C{download_buffer_budget}); None: each download is bounded
    #: only by its own C{read_ahead}.  Shared like C{buffers}.
    download_buffers: Optional[DownloadBuffers] = field(
        default=None, compare=False, repr=False
    )


@dataclass(frozen=True)
class RandomAccessSettings:
    """
    Per-gateway knobs of reads and writes at offsets (SFTP) over sequential
    streams: the read window of a L{RangedReader}, the reorder window of a
    L{PositionalWriter} and the bounded spool behind it.

    Build one per gateway and share it: its L{spool_budget} is what every
    open file's spool counts against (a copy made with
    C{dataclasses.replace} gets a budget of its own).
    """

    read_window: int = 8 * MiB
    reorder_window: int = 16 * MiB
    #: The spool disk one open file may use.
    spool_limit: int = 1024 * MiB
    spool_dir: Optional[str] = None
    #: The largest hole a write or a size change may leave beyond the end
    #: of a file (C{max_sparse_gap}): holes are stored, and billed, as zeros.
    max_sparse_gap: int = 64 * MiB
    #: The spool disk all open files of the gateway share
    #: (C{max_spool_size}); None: only C{spool_limit} per file.
    max_spool_size: Optional[int] = None
    spool_budget: Optional[SpoolBudget] = field(
        init=False, default=None, compare=False, repr=False
    )

    def __post_init__(self) -> None:
        if self.max_spool_size is not None:
            # A frozen dataclass sets its derived fields this way.
            object.__setattr__(self, "spool_budget", SpoolBudget(self.max_spool_size))
