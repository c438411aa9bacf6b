"""A self-contained demo: `python -m reproq_django.demo`."""
