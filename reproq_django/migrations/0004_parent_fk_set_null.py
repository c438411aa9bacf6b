from django.db import migrations

from reproq_django.schema import parent_fk_set_null


class Migration(migrations.Migration):
    # Runs sql/migrations/0003_parent_fk_set_null.sql on PostgreSQL (the same file `reproq
    # migrate` runs); no model changes, and nothing to do on other databases.
    dependencies = [("reproq_django", "0003_complete_schema")]

    operations = [migrations.RunPython(parent_fk_set_null, migrations.RunPython.noop)]
