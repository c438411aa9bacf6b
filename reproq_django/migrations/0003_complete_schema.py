from django.db import migrations

from reproq_django.schema import create_schema


class Migration(migrations.Migration):
    # The older reproq-django's history has "0001_initial" too (the first migration its
    # 0001_baseline replaced), so on a database it migrated Django takes our 0001 as applied
    # and the tables stay as it left them. The baseline SQL, idempotent, is run again: it
    # completes such tables without losing rows, and changes nothing where our 0001 ran.
    atomic = False  # CREATE INDEX CONCURRENTLY

    dependencies = [("reproq_django", "0002_notify_ready")]

    operations = [migrations.RunPython(create_schema, migrations.RunPython.noop)]
