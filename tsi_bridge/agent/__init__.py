"""The gridvm TSI agent: a sturdy, standard-library-only UNICORE TSI for guests (nobatch mode).

Run it with ``python3 -m tsi_bridge.agent --config FILE``.  Nothing in this package may import
anything outside the standard library; ``ssl`` is imported only when TLS is configured.
"""
