"""Pure decisions: frozen values in, a Decision with its reasons out. No I/O, settings, logging or clock."""
