"""ASGI entry point: Django for HTTP, pgbinding's demultiplexer at /binding/ for WebSockets,
and pgbinding's listener running inside this process (one process, in-memory channel layer).

    daphne liveboard.asgi:application
"""

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "liveboard.settings")
django_asgi_app = get_asgi_application()  # sets Django up before the imports below

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.urls import path  # noqa: E402

from pgbinding.asgi import with_listener  # noqa: E402
from pgbinding.consumers import Demultiplexer  # noqa: E402

from .bindings import ItemBinding  # noqa: E402


class LiveboardDemultiplexer(Demultiplexer):
    consumers = {"items": ItemBinding.consumer}


router = ProtocolTypeRouter(
    {
        # Static files (the pgbinding.js client) from the apps' static/ folders: daphne
        # itself serves none. Behind a real web server, collectstatic and serve them there.
        "http": ASGIStaticFilesHandler(django_asgi_app),
        # The socket is authenticated by the session cookie, so refuse pages of other
        # sites (cross-site WebSocket hijacking): the Origin must be in ALLOWED_HOSTS.
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter([path("binding/", LiveboardDemultiplexer.as_asgi())]))
        ),
    }
)
# One process with the in-memory layer: run the listener here. With REDIS_URL (the production
# shape) `manage.py pglisten` runs in its own process instead.
application = router if os.environ.get("REDIS_URL") else with_listener(router)
