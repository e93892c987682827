from django.conf import settings
from django.contrib.auth import get_user_model
from django.shortcuts import render


def index(request):
    usernames = dict(get_user_model().objects.values_list("pk", "username"))
    return render(
        request,
        "liveboard/index.html",
        {
            "usernames": usernames,
            "me": request.user.pk,
            "psql_hint": settings.LIVEBOARD_PSQL_HINT,
        },
    )
