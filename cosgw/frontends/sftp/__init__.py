"""
The SFTP frontend: SSH (host keys, the transport, user authentication, the
session) and SFTP version 3 over a user's file system, the same one FTP
serves.  It offers one thing, the C{sftp} subsystem.

Conch does the protocol; what it gets wrong for an internet-facing gateway
is replaced here (see reference/twisted-conch-cos-facts.md section c), each
in the module that owns it:

  - L{cosgw.frontends.sftp.algorithms}: only modern ciphers, MACs, key
    exchanges and signatures, filtered from Conch's own lists.
  - L{cosgw.frontends.sftp.transport}: a version string without a Twisted
    version, admission, the login, idle and closing deadlines on the
    injected reactor, a disconnect that lets the client read its reason,
    server-sig-algs that name the user-key algorithms, packets taken whole
    and none over 256 KiB.
  - L{cosgw.frontends.sftp.userauth}: guarded password and signed-key
    logins, no "any key would do", late and pipelined logins logged out.
  - L{cosgw.frontends.sftp.session}: unknown channels refused without a
    traceback, shell and exec refused politely, a session channel that
    closes on EOF, the avatar L{SFTPUser}.
  - L{cosgw.frontends.sftp.server}, L{cosgw.frontends.sftp.handles},
    L{cosgw.frontends.sftp.protocol}: SFTP requests as file-system calls,
    one error-to-status mapping, uploads that commit only on CLOSE and are
    aborted with the session, at most C{max_handles} handles.
  - L{cosgw.frontends.sftp.flow}: a session's requests and replies
    bounded, with backpressure on the connection or the SSH window.
  - L{cosgw.frontends.sftp.hostkeys} loads or generates the host keys,
    L{cosgw.frontends.sftp.factory} builds transports over one portal, and
    L{cosgw.frontends.sftp.service.SFTPFrontend} composes them from the
    config.

Everything that blocks (reading and generating host keys) happens at
construction, before the reactor runs.
"""
