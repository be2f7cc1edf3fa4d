"""
The admin listener (C{[server] admin_listen}): Prometheus metrics, health
and readiness for load balancers, a live status page and a JSON API that
can end a session.  It reads the gateway's live state (the session table,
the accounts, the pool, the defender, the stores) and the audit events;
nothing below it knows it exists.

  - L{cosgw.admin.service}: the service, its site and listener;
  - L{cosgw.admin.access}: loopback only, or basic auth over admin_users;
  - L{cosgw.admin.metrics}: counters from audit events, store latency;
  - L{cosgw.admin.live}: gauges read at each scrape;
  - L{cosgw.admin.health}: readiness and the periodic store checks;
  - L{cosgw.admin.api}, L{cosgw.admin.pages}: what it answers.
"""

from cosgw.admin.service import AdminService

__all__ = ["AdminService"]
