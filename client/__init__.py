"""The gridvm command line and a small Python API for users, operators and image creators."""
