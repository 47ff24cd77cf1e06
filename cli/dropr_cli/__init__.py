"""dropr's commands: one thin click module per command."""
