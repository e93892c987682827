# The extensions the fidelity models need: hstore (HStoreField) and citext (the
# case-insensitive text column). Written by hand; makemigrations writes the models after it.

from django.contrib.postgres.operations import CITextExtension, HStoreExtension
from django.db import migrations


class Migration(migrations.Migration):
    dependencies = []

    operations = [HStoreExtension(), CITextExtension()]
