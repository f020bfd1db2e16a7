"""One module per CLI command group; each is thin: parse, call the library, print."""
