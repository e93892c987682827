"""Capture: the SQL the migrations install (versioned templates), its rendering, and the
migration operations and makemigrations integration that pin it in projects' migrations."""
