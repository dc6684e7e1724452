"""One module per converted bug report or healthy program; see ../README.md for the table."""
