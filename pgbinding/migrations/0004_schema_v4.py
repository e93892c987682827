from django.db import migrations

from pgbinding.capture.sql import schema_sql

forward, reverse = schema_sql("v4")


class Migration(migrations.Migration):
    dependencies = [("pgbinding", "0003_schema_v3")]

    operations = [migrations.RunSQL(forward, reverse)]
