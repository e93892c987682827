from django.db import migrations

from pgbinding.capture.sql import schema_sql

forward, reverse = schema_sql("v5")


class Migration(migrations.Migration):
    dependencies = [("pgbinding", "0004_schema_v4")]

    operations = [migrations.RunSQL(forward, reverse)]
