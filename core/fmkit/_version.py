"""fmkit's version, in a module of its own: the registry and run provenance read it without importing the
package's ``__init__`` (whose API list names them back: an import cycle, ``tests/test_import_graph.py``)."""

__version__ = "0.1.0"
