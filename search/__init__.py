"""Query-by-example search: build an index of an archive with a trained method, query it from files.

``python -m experiments index|search|serve`` (see docs/search_service.md). The package uses methods only
through ``embed()``, data through the DataModules' datasets and transforms, and exact search through
``callbacks.search``; nothing in ``lightning_modules``, ``datamodules`` or ``callbacks`` imports it.
"""
