from django.urls import include, path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    # login/, logout/ (POST), password_change/ ...: templates in templates/registration/.
    path("accounts/", include("django.contrib.auth.urls")),
]
