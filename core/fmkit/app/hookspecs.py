"""Hook specifications: one hook per component kind, each handed a ``register`` callable.

A plugin implements any of these with ``@hookimpl`` (from :mod:`fmkit.plugin`)::

    @hookimpl
    def register_models(register):
        from my_plugin.net import Net, NetOptions   # heavy imports only when called
        register("my_net", Net, options=NetOptions, description="...")

``register(name, factory, options=None, description="")``: ``factory`` is called with the validated
options as keyword arguments plus any build-context names its signature asks for: ``data_info``
(every kind but solvers and datasets), ``predictions`` (models: ``{field: "velocity" | "x1"}``) and
``field_info``/``field`` (sources built for one field, ``source.fields.<f>``, only) and ``registry``
(every kind: the registry building it). ``options`` is a pydantic model (``extra="forbid"``; unknown
keys are refused either way) or None for none.

A plugin may declare kinds of its own (``register_hookspecs``): a hook ``register_<kind>(register)``
it declares is a component kind the registry serves as it serves these.
"""

from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("fmkit")
hookimpl = pluggy.HookimplMarker("fmkit")

#: component kinds, each with a ``register_<kind>`` hook
KINDS = ("paths", "couplings", "sources", "models", "solvers", "datasets", "metrics", "writers", "callbacks",
         "loggers")


@hookspec
def register_paths(register):
    """Probability paths (per field): affine with a scheduler, discrete (CTMC)."""


@hookspec
def register_couplings(register):
    """Couplings that re-pair (x0, x1, cond) within a minibatch."""


@hookspec
def register_sources(register):
    """Source distributions (per field), with sampling and log-density."""


@hookspec
def register_models(register):
    """Models: ``nn.Module`` with ``forward(x_t, t, cond) -> state``: per continuous field the velocity or
    the endpoint x1 (the ``predictions`` context says which), per categorical field logits."""


@hookspec
def register_solvers(register):
    """ODE solvers that integrate a velocity field from the source to data."""


@hookspec
def register_datasets(register):
    """Datasets: factories returning :class:`fmkit.plugin.Dataset`."""


@hookspec
def register_metrics(register):
    """Metrics: factories returning ``metric(samples, dataset) -> dict[str, float]``."""


@hookspec
def register_writers(register):
    """Writers: factories returning ``writer(samples, out_dir, dataset, step) -> list[Path]``."""


@hookspec
def register_callbacks(register):
    """Trainer callbacks (:class:`fmkit.plugin.Callback`)."""


@hookspec
def register_loggers(register):
    """Loggers and experiment trackers (``trainer.loggers``): factories returning a
    :class:`fmkit.plugin.Logger` (``start(run)``, ``log_scalars(step, scalars)``, ``finish()``, optionally
    ``log_media(step, name, path)``)."""


@hookspec
def register_commands(app):
    """Add typer sub-commands to the ``fmkit`` CLI app."""


@hookspec
def register_recipes(register):
    """Recipes a plugin ships: ``register(name, path_to_yaml)``."""


@hookspec
def register_hookspecs(register):
    """A plugin's own hooks: ``register(specs)`` with a class or module of ``@fmkit.plugin.hookspec``
    functions, declared before any plugin's hooks are checked; each ``register_<kind>(register)`` among
    them is a component kind (the audio plugin's ``register_vocoders``)."""
