"""The application layer: recipes, the plugin registry and its hook specs, the built-in plugin,
loading runs (``run``) and the ``fmkit`` command line (``cli``)."""
