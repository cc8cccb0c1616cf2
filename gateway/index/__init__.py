"""The index: one row per received instance, its stage and evidence (SQLite)."""
