"""
The FTP and FTPS frontend: FTP control connections over the logged-in
user's file system (L{cosgw.vfs}), the one door to storage.

  - L{service}: L{FTPFrontend}, the frontend as one service built from the
    config (server TLS, the avatar registered with the realm, factories,
    a listener per endpoint);
  - L{factory}: the control-connection factory, with every setting a
    connection needs, and the connection limits and login defender;
  - L{protocol}: the thin control connection (lines, the command queue,
    transfers detached, dispatch, deadlines);
  - L{session}: its state, as tables (states and transitions, which state
    admits which commands) and the parameters commands set;
  - L{commands}: the dispatch table; its handlers by concern in
    L{login_commands}, L{file_commands}, L{info_commands},
    L{hash_commands}, L{ports} and L{transfers}, over L{context};
  - L{replies}: replies, and the one mapping of file-system errors to
    reply codes;
  - L{data}: data connections and the listing producer; L{facts}: MLSx
    facts; L{tls}: the server's TLS, shared by control and data
    connections.

What Twisted's FTP server gets wrong for a gateway is replaced (see
reference/twisted-conch-cos-facts.md section a): PASV and EPSV answer at
once (Twisted #4819); data connections report how they ended, so a reset
upload is an abort and never a "226" of a partial file, and buffer nothing
before a consumer is attached; ABOR, STAT and NOOP are answered during a
transfer; ASCII mode moves bytes unchanged (Twisted's crashes on Python 3,
#9555).
"""
