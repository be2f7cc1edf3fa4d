"""
Where the gateway's log goes and in what form: the observers for standard
output, twistd's log file and C{log_dir} (text or JSON lines, from
C{log_level} up), and the xferlog of finished transfers.  Every output is
an observer of the one C{twisted.logger} stream; the audit events
(L{cosgw.audit}) are in it like any other event.
"""

from cosgw.logs.formats import FORMATS, json_line, text_line
from cosgw.logs.observers import AtLevel, LineObserver, output_observer, set_level
from cosgw.logs.xferlog import XferlogFile, xferlog_line

__all__ = [
    "FORMATS",
    "AtLevel",
    "LineObserver",
    "XferlogFile",
    "json_line",
    "output_observer",
    "set_level",
    "text_line",
    "xferlog_line",
]
