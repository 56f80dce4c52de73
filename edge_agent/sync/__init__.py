"""The agent's side of the management API (docs/management.md): optional, never required.

    errors      the sync exception tree (no I/O, cheap to import)
    retry       when to try again after a failure (pure: no clock, no randomness, no I/O)
    client      ``SyncClient``: one request per method over httpx, typed answers and errors

Nothing here decides what to do with an answer: a downloaded bundle goes to
``importer.verify_and_commit`` like any offline bundle, and the schedule of requests is the
sync engine's. Importing this package does not import httpx.
"""
