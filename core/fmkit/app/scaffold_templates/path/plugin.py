"""fmkit plugin __plugin__: registers its __kind__ and ships a recipe (entry point group ``fmkit``)."""

from pathlib import Path

from fmkit.plugin import AffinePath, hookimpl, register_recipe_folder


@hookimpl
def register_paths(register):
    from fmkit___plugin__.paths import PathOptions, SineScheduler

    register("__plugin___sine", lambda prediction: AffinePath(SineScheduler(), prediction), options=PathOptions,
             description="__desc__")


@hookimpl
def register_recipes(register):
    register_recipe_folder(register, Path(__file__).parent / "recipes")
