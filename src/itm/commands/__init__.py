"""One module per ``itm`` subcommand: HELP, add_arguments(parser), run(args) -> exit status."""
