"""Views of the stats table: terminal, HTML, notebook."""
