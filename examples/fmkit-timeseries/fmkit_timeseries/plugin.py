"""Registers the time-series components and recipe (entry point ``timeseries`` in group ``fmkit``)."""

from pathlib import Path

from fmkit.plugin import hookimpl, register_recipe_folder


@hookimpl
def register_datasets(register):
    from fmkit_timeseries.data import SineOptions, SineWaves

    register("sine_waves", SineWaves, options=SineOptions)


@hookimpl
def register_models(register):
    from fmkit_timeseries.net import ConvNet1d, ConvNetOptions

    register("conv1d", ConvNet1d.from_data, options=ConvNetOptions,
             description="1-D residual conv velocity net with time and class embeddings")


@hookimpl
def register_metrics(register):
    from fmkit_timeseries.metrics import FrequencyMetric

    register("frequency", FrequencyMetric)


@hookimpl
def register_recipes(register):
    register_recipe_folder(register, Path(__file__).parent / "recipes")
