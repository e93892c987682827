"""A test app with one column of every field type Django ships for Postgres (the fidelity
suite compares what events carry with what the ORM reads)."""
