from django.db import migrations, models

from pgbinding.capture.sql import schema_sql

forward, reverse = schema_sql("v2")


class Migration(migrations.Migration):
    dependencies = [("pgbinding", "0001_initial")]

    operations = [
        migrations.RunSQL(
            forward,
            reverse,
            state_operations=[
                migrations.AddField("listenerstate", "leader", models.TextField(null=True)),
                migrations.AddField("listenerstate", "leader_pid", models.IntegerField(null=True)),
                migrations.AddField(
                    "listenerstate", "lease_until", models.DateTimeField(null=True)
                ),
            ],
        ),
    ]
