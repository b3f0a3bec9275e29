"""The UNICORE TSI wire protocol: Twisted client, TLS, and the stdlib-only guest agent."""
