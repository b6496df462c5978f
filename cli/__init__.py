"""The `pulse` command."""
