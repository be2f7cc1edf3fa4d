"""
Per-user and per-client policy beside the file system: accounts (who may log
in, with which home, permissions and limits), quota, bandwidth throttles,
connection and session limits, and the login defender.  Frontends consult
these; the file system carries a user's quota and rates into every transfer.
"""
