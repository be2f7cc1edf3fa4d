"""How transfers use memory and the store."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

MiB = 1024 * 1024


@dataclass(frozen=True)
class TransferSettings:
    """How transfers use memory and the store; built from the config."""

    part_size: int = 8 * MiB
    parts_in_flight: int = 4
    read_chunk: int = 4 * 1024 * 1024
    read_ahead: int = 2
    max_file_size: Optional[int] = None
    #: Keep an interrupted upload's stored parts so the client can resume
    #: it (REST n + STOR, APPE), instead of aborting them at once.
    resume_uploads: bool = True


@dataclass(frozen=True)
class RandomAccessSettings:
    """
    Per-gateway knobs of reads and writes at offsets (SFTP) over sequential
    streams: the read window of a L{RangedReader}, the reorder window of a
    L{PositionalWriter} and the bounded spool behind it.
    """

    read_window: int = 8 * MiB
    reorder_window: int = 16 * MiB
    spool_limit: int = 1024 * MiB
    spool_dir: Optional[str] = None
