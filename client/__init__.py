"""The REST client of a gridvm site: ``api`` (a small standard-library Python API) and the
user commands of ``gridvm`` over it (jobs, a site's images, instances, pools, config,
completion).  It imports only ``base``; the ``gridvm`` entry package puts it together
with the local commands (serve, demo, catalogue)."""
