"""Application utilities below every layer: atomic writes and checked reads (``io``), safe paths, schedules,
progress bars, optional-extra checks."""
