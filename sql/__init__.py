"""SQL shipped with reproq: numbered migrations and the named runtime queries (queries.sql).

This folder is installed as the package ``reproq_cli.sql`` so the files are read through
importlib.resources, which also works from inside the zipapp.
"""
