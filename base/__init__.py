"""The ground floor of gridvm: what every other package may use and nothing here imports.

``paths`` (where local state lives), ``db`` (the one SQLAlchemy schema base, engines,
sessions and the one alembic history), ``identity`` (who is asking), ``reasons`` (the
failure codes of architecture.md) and ``errors`` (the error base every package derives from).
This package imports no other gridvm package (checked by the import contract).
"""
