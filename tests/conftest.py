"""The suite is grouped by what it runs against: ``unit/`` (modules and kernels), ``interop/``
(real exporters, nfcapd, vendor packets), ``live/`` (a running server, real SMTP and syslog),
``web/`` (a real browser); shared helpers are in ``support/``."""

from .support.server import server  # noqa: E402, F401  (a fixture: a live ``sluice serve``)
