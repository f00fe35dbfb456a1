"""One module per command or family; each exposes COMMANDS for the root group."""
