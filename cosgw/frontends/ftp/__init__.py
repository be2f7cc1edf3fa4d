"""
The FTP and FTPS frontend.
"""
