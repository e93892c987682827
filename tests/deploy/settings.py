"""tests.settings plus what ``collectstatic`` needs, for the deployment test only.

tests/settings.py has neither ``django.contrib.staticfiles`` nor ``STATIC_ROOT``; the test runs
``manage.py collectstatic --settings tests.deploy.settings`` with ``PGBINDING_DEPLOY_STATIC_ROOT``
naming its output directory, which nginx then serves at /static/ (as docs/deploy.md has it).
"""

import os
from pathlib import Path

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "django.contrib.staticfiles"]
STATIC_URL = "static/"
STATIC_ROOT = os.environ["PGBINDING_DEPLOY_STATIC_ROOT"]
# The test's page (static/deploy-test/board.html), collected beside pgbinding.js.
STATICFILES_DIRS = [Path(__file__).resolve().parent / "static"]
