# Run with:  twistd -ny etc/cosgw.tac
# COSGW_CONFIG names the config file; without it, the embedded default
# (./cosgw-data over FTP on port 2121) is served.
import os

from twisted.application import service

from cosgw.config import embedded_config, load_config
from cosgw.service import makeService

path = os.environ.get("COSGW_CONFIG")
config = load_config(path) if path else embedded_config()

application = service.Application("cosgw")
makeService(config).setServiceParent(application)
