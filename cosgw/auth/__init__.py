"""
Accounts and logins, once for every frontend.

Each frontend logs people in through one L{twisted.cred.portal.Portal}, the
seam between protocol and application::

    credentials --> checkers --> avatar id --> portal --> realm --> avatar
    (USER/PASS,     passwords.PasswordChecker,            realm.Realm: the
     SSH userauth)  keys.KeyChecker                       frontend's factory

The modules:

  - L{cosgw.auth.hashes}: the stored password hashes (scrypt, passlib's
    pbkdf2-sha256, V5's plain text), compared in constant time.
  - L{cosgw.auth.passwords}: the checker for user name and password, which
    verifies in the thread pool, bounded, with a failure delay and no timing
    difference for unknown users.
  - L{cosgw.auth.keys}: the checker for SSH public keys, and which keys are
    strong enough (shared with the SSH host keys).
  - L{cosgw.auth.realm}: the realm; it knows no protocol, each frontend
    registers the factory of the avatar it needs.
  - L{cosgw.auth.text}: names and passwords as text, whether FTP's
    latin-1-decoded str or SSH's bytes brought them.
  - L{cosgw.auth.passwd}: the C{cosgw-passwd} console script (also
    C{python -m cosgw.auth}), passwd files, and the generated account of the
    embedded default.
  - L{cosgw.auth.files}: the exclusive, atomic creation of the secrets the
    gateway writes to its state directory.

Passwords never reach a log line or an exception message, and nothing here
imports the global reactor.
"""
