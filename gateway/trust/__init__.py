"""Verdicts and the work around them: the status table, verify, audit, restore, views."""
