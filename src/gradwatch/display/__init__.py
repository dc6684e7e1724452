"""How findings and runs are shown: plain text, the terminal (rich), notebooks, markdown.

Nothing here imports the diagnosis: it formats what it is given, so diagnose can call it."""
