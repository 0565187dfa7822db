"""Jobs and the work they run: request validation, planning, execution."""
