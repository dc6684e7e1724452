"""`python -m gradwatch` runs the command line."""

from .cli import main

main()
