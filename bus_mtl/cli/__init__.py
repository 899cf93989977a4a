"""The ``bus-mtl`` command line. See :mod:`bus_mtl.cli.main`."""
