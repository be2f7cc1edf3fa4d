"""
The gateway's life as a process, beside the protocols: the drain that lets
transfers finish when it is told to stop (SIGTERM, ``cosgw stop``), and the
reload that applies a changed config to new logins without dropping a
session (SIGHUP, ``cosgw reload``).
"""
