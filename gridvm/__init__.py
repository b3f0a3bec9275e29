"""The ``gridvm`` command's entry: the parser and ``main()`` (``cli``), ``serve``, ``demo`` and
the image creators' local ``catalogue`` commands (the image builder, a local catalogue).

It may import every gridvm package; no package imports it.  The site commands over REST
live in ``client``.
"""
