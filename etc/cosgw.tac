# Run with:  twistd -ny etc/cosgw.tac
# COSGW_CONFIG names the config file; without it, the embedded default
# (./cosgw-data over FTP on port 2121) is served.
#
# The gateway logs to standard output in [server] log_format, from
# log_level up: setServiceParent gives the Application that log observer
# (its ILogObserver component), which twistd then logs with instead of its
# own, so twistd's --logfile does not apply; use log_dir for a file.  To log
# elsewhere, set the component before adding the service, e.g.
#     application.setComponent(ILogObserver, output_observer(stream, "json", "info"))
# with output_observer from cosgw.logs.
#
# SIGTERM (and SIGINT) drain the gateway as with `twistd cosftp`: transfers
# in progress get [server] drain_timeout seconds, then twistd exits 0; a
# second signal interrupts at once.
import os

from twisted.application import service
from twisted.internet import reactor

from cosgw.config import embedded_config, load_config
from cosgw.lifecycle.drain import install_signal_handlers
from cosgw.service import makeService

path = os.environ.get("COSGW_CONFIG")
config = load_config(path) if path else embedded_config()

application = service.Application("cosgw")
gateway = makeService(config)
gateway.setServiceParent(application)
install_signal_handlers(gateway.drain, reactor)
