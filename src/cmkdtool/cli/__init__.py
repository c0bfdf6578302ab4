"""The command-line face of cmkdtool: one module per subcommand, joined in app.py. Imports no torch at load."""
