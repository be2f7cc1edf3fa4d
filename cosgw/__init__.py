"""
cosgw: FTP, FTPS and SFTP in front of Tencent Cloud Object Storage.

Importing this package must stay cheap and must not install a reactor: the
twistd plugin imports it while scanning plugins.
"""

__version__ = "0.1.0"
