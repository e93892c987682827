import django

django.setup()

from tests.routing import application  # noqa: E402

__all__ = ["application"]
