"""The benchmarks' ASGI application.

``/pgbinding/``: pgbinding's Demultiplexer for stream ``ticks``, joined to the ``ticks`` group.
``/users/``: every binding, no groups, behind ``AuthMiddlewareStack``: the socket's user comes
from the ``sessionid`` cookie of its handshake, as a browser's would (bench/fanout, bench/replay).
``/signal/`` and ``/dcrf/``: the peers (bench/site/benchapp/peers.py); ``/dcrf/`` only when
djangochannelsrestframework is installed (the benchmark environment has it) and ``BENCH_PEERS``
allows it.
With ``BENCH_LAYER=memory`` the pgbinding listener runs inside this process.
"""

import os
import sys

import django

if os.environ.get("BENCH_SWITCH_INTERVAL"):  # experiment: the GIL's switch interval (seconds)
    sys.setswitchinterval(float(os.environ["BENCH_SWITCH_INTERVAL"]))

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "bench.site.settings")
django.setup()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.conf import settings  # noqa: E402
from django.urls import path  # noqa: E402

from bench.site.benchapp import peers  # noqa: E402
from bench.site.benchapp.bindings import TickBinding  # noqa: E402
from pgbinding.asgi import with_listener  # noqa: E402
from pgbinding.consumers import Demultiplexer  # noqa: E402


class TicksDemultiplexer(Demultiplexer):
    consumers = {"ticks": TickBinding}

    def connection_groups(self, **kwargs):
        return ["ticks"]


routes = [
    path("pgbinding/", TicksDemultiplexer.as_asgi()),
    path("users/", AuthMiddlewareStack(Demultiplexer.as_asgi())),
    path("signal/", peers.SignalConsumer.as_asgi()),
]
if peers.DCRF and "dcrf" in peers.enabled():
    # Defining the consumer connects dcrf's receivers (post_init too, for every Tick built,
    # the listener's rows included): only where the dcrf peer is wanted.
    routes.append(path("dcrf/", peers.dcrf_consumer().as_asgi()))

application = ProtocolTypeRouter({"websocket": URLRouter(routes)})
if settings.LAYER == "memory" and os.environ.get("BENCH_IN_PROCESS_LISTENER", "1") == "1":
    application = with_listener(application)

if os.environ.get("BENCH_GC_FREEZE") == "1":  # experiment: startup objects out of the GC's way
    import gc

    gc.freeze()
