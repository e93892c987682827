from django.db import migrations, models

from pgbinding.capture.sql import schema_sql

forward, reverse = schema_sql("v1")


class Migration(migrations.Migration):
    initial = True
    dependencies: list[tuple[str, str]] = []

    operations = [
        migrations.RunSQL(
            forward,
            reverse,
            state_operations=[
                migrations.CreateModel(
                    name="Change",
                    fields=[
                        ("id", models.BigAutoField(primary_key=True, serialize=False)),
                        ("created_at", models.DateTimeField()),
                        ("table_name", models.TextField()),
                        ("op", models.CharField(max_length=1)),
                        ("row_pk", models.TextField(null=True, db_column="pk")),
                        ("old", models.JSONField(null=True)),
                        ("new", models.JSONField(null=True)),
                    ],
                    options={"db_table": "pgbinding_change", "managed": False, "ordering": ["id"]},
                ),
                migrations.CreateModel(
                    name="ListenerState",
                    fields=[
                        ("name", models.TextField(primary_key=True, serialize=False)),
                        ("position", models.BigIntegerField()),
                        ("pending", models.JSONField()),
                        ("updated_at", models.DateTimeField()),
                    ],
                    options={"db_table": "pgbinding_listener", "managed": False},
                ),
            ],
        ),
    ]
