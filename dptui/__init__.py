"""dptui: the terminal app and CLI for dpcore."""
