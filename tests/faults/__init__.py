"""The fault suite: does every committed change reach its subscribers, once, in per-row order,
while Redis, the listener or Postgres fail? (See conftest.py for the shared machinery.)"""
