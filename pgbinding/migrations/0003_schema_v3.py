from django.db import migrations

from pgbinding.capture.sql import schema_sql

forward, reverse = schema_sql("v3")


class Migration(migrations.Migration):
    dependencies = [("pgbinding", "0002_schema_v2")]

    operations = [migrations.RunSQL(forward, reverse)]
