from django.templatetags.static import static
from django.urls import include, path
from django.views.generic import RedirectView

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    # login/, logout/ (POST), password_change/ ...: templates in templates/registration/.
    path("accounts/", include("django.contrib.auth.urls")),
    # The pages name their icon (<link rel="icon">); this is for clients that ask for
    # /favicon.ico anyway, so that no request of the demo ends in a 404.
    path(
        "favicon.ico",
        RedirectView.as_view(url=static("liveboard/favicon.svg"), permanent=True),
        name="favicon",
    ),
]
