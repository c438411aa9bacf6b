from django.db import migrations

from reproq_django.schema import create_notify_trigger, drop_notify_trigger


class Migration(migrations.Migration):
    # Runs sql/migrations/0002_notify_ready.sql on PostgreSQL (the same file `reproq migrate`
    # runs); no model changes, and nothing to do on other databases.
    dependencies = [("reproq_django", "0001_initial")]

    operations = [migrations.RunPython(create_notify_trigger, drop_notify_trigger)]
