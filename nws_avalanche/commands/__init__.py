"""One module per ``nws-bench`` subcommand; each calls ``cli.command(name, help)``."""
