"""Sales handoff: which rep a sales-qualified lead goes to, and when that rep works.

`routing` and `hours` are pure functions over the validated `SalesTeam` (sales.yaml,
models/definitions.py): no database, no clock of their own.
"""
