"""
The twistd plugin for cosgw: ``twistd -n cosftp``.

Only a lazy ServiceMaker lives here.  twistd imports every plugin module while
it scans for plugins, before it has parsed ``--reactor``; importing the FTP or
SSH modules here would install the default reactor too early.
"""

from twisted.application.service import ServiceMaker

cosftp = ServiceMaker(
    "cosgw",
    "cosgw.tap",
    "FTP, FTPS and SFTP gateway to Tencent COS buckets (or a local directory)",
    "cosftp",
)
