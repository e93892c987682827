from django.conf import settings
from django.contrib.auth import get_user_model
from django.shortcuts import render


def index(request):
    usernames = dict(get_user_model().objects.values_list("pk", "username"))
    user = request.user
    return render(
        request,
        "liveboard/index.html",
        {
            "usernames": usernames,
            # Who is looking, for the page to offer edit buttons only where the binding
            # (bindings.py) allows a write: staff on any item, others on their own. The
            # server checks every write anyway; this only spares users buttons that fail.
            "viewer": {
                "id": user.pk if user.is_authenticated else None,
                "staff": bool(user.is_authenticated and user.is_staff),
            },
            "psql_hint": settings.LIVEBOARD_PSQL_HINT,
        },
    )
