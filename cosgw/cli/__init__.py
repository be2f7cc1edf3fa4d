"""
The C{cosgw} command: what an operator runs beside the gateway.

  - C{check-config FILE [--probe]} (L{check}): the config as the gateway
    reads it, and whether its stores answer.
  - C{passwd}: C{cosgw-passwd} under the one command
    (L{cosgw.auth.passwd}).
  - C{sessions}, C{kick ID} (L{admin}): the live sessions, through the
    running gateway's admin API.
  - C{uploads list|abort} (L{uploads}): unfinished multipart uploads.

C{main} holds the parser; C{stores} builds the gateway's own stores for a
command and runs it on a reactor; C{text} formats and parses what people
read and write.  Importing any of them installs no reactor: a command that
needs one imports it when it runs.
"""
