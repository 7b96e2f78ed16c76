"""scopefs daemon: the only package that knows pyfuse3."""
