"""The ``mlcycle`` Hydra application: glue that runs the cycle's stages on a config.

Nothing in the library imports this package.
"""
