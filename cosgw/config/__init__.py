"""
cosgw's configuration: one INI file read into frozen, typed values.

Two formats are read, and L{load_config} tells them apart by their sections:

  - cosgw's own INI (C{etc/cosgw.ini} documents every key): C{[server]},
    C{[transfer]}, C{[storage:NAME]} and C{[user:NAME]}.  It is strict: an
    unknown section or key is an error (L{cosgw.config.native}).
  - COS FTP Server V5's C{conf/vsftpd.conf}, read unchanged, so a V5
    installation can switch to cosgw without touching its file.  Any file
    with a C{[COS_ACCOUNT...]} section is V5's.  It is lenient where V5 was:
    keys cosgw does not use become notices, not errors
    (L{cosgw.config.v5} says how each V5 key maps onto cosgw).

Every error is a L{ConfigError} whose text is one line naming the file, the
section, the key and what was expected, and never quotes a secret.  Things an
operator should know but that do not stop the gateway (a plain-text password,
a V5 key cosgw ignores, passive ports that collide with outgoing connections)
are collected in L{Config.notices} for the service to log once at start.

This package imports only the standard library: the twistd plugin and the
command-line tools import it cheaply, and it must never install a reactor.
The exceptions are checking a user's SSH public keys, which imports
C{twisted.conch.ssh.keys} (no reactor) when a file has keys, and checking
endpoint strings, which imports C{twisted.internet.endpoints} (no reactor)
when a file names one, at load time.

The modules, from the bottom up:

  - C{model}: the frozen values (L{Config} and its parts), the constants
    they share, and L{ConfigError}.
  - C{values}: single values from text (sizes, booleans, permissions,
    homes), raising C{ValueError}.
  - C{ini}: reading the file's text and its sections; L{ini.Section} turns
    a bad value into the one-line error.
  - C{fields} and C{sshkeys}: one key of a section read into a checked
    value, shared by both formats.
  - C{endpoints}: server endpoint strings parsed by Twisted without
    listening (and why Twisted refused one, for the listeners' errors).
  - C{reach}: how clients reach the gateway (PROXY headers, WebDAV,
    FTP name encodings) and the state replicas share.
  - C{native} and C{v5}: the two formats' loaders.
  - C{loading}: L{load_config} and L{embedded_config}.

Code outside the package imports from C{cosgw.config} only; the modules are
its private seams.
"""

from cosgw.config.endpoints import endpoint_error, split_listener
from cosgw.config.loading import embedded_config, load_config
from cosgw.config.model import (
    ALL_PERMISSIONS,
    Config,
    ConfigError,
    ServerConfig,
    StorageConfig,
    TransferConfig,
    UserConfig,
)
from cosgw.config.values import (
    authority_permissions,
    normalize_home,
    parse_bool,
    parse_encoding,
    parse_permissions,
    parse_size,
)

__all__ = [
    "ALL_PERMISSIONS",
    "Config",
    "ConfigError",
    "ServerConfig",
    "StorageConfig",
    "TransferConfig",
    "UserConfig",
    "authority_permissions",
    "embedded_config",
    "endpoint_error",
    "load_config",
    "normalize_home",
    "parse_bool",
    "parse_encoding",
    "parse_permissions",
    "parse_size",
    "split_listener",
]
