"""`python -m launcher.cli`: the `launch` command."""

from launcher.cli.app import main

main(prog_name="launch")
