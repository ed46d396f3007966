"""fmkit plugin __plugin__: registers its __kind__ and ships a recipe (entry point group ``fmkit``)."""

from pathlib import Path

from fmkit.plugin import hookimpl, register_recipe_folder


@hookimpl
def register_datasets(register):
    from fmkit___plugin__.data import SpiralDataset, SpiralOptions

    register("__plugin___spiral", SpiralDataset, options=SpiralOptions, description="__desc__")


@hookimpl
def register_recipes(register):
    register_recipe_folder(register, Path(__file__).parent / "recipes")
