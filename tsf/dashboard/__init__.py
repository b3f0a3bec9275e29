"""The web dashboard: server-rendered pages for a browser, served at ``/<SITE>/dashboard``."""
