"""One module per subcommand: parse the flags, call the core or db layer, render the result."""
