"""fmkit hook implementations of the image plugin (heavy imports happen inside the hooks)."""

from __future__ import annotations

from pathlib import Path

from fmkit.plugin import hookimpl, register_recipe_folder

_HERE = Path(__file__).parent


@hookimpl
def register_datasets(register):
    from fmkit_image.data import (
        ImageFolderOptions,
        TorchvisionOptions,
        build_cifar10,
        build_fashion_mnist,
        build_image_folder,
        build_mnist,
    )

    register("mnist", build_mnist, options=TorchvisionOptions,
             description="MNIST 1x28x28 digits from $FMKIT_DATA_DIR/mnist (or torchvision's download)")
    register("fashion_mnist", build_fashion_mnist, options=TorchvisionOptions,
             description="Fashion-MNIST 1x28x28 from $FMKIT_DATA_DIR/fashion_mnist (or torchvision's download)")
    register("cifar10", build_cifar10, options=TorchvisionOptions,
             description="CIFAR-10 3x32x32 from $FMKIT_DATA_DIR/cifar10 (or torchvision's download), flips")
    register("image_folder", build_image_folder, options=ImageFolderOptions,
             description="your own images: root/<class>/*.png, resized and centre-cropped (torchvision ImageFolder)")


@hookimpl
def register_models(register):
    from fmkit_image.unet import UNetOptions, build_unet

    register("unet", build_unet, options=UNetOptions,
             description="ADM/DDPM U-Net: res blocks, GroupNorm, attention, class embedding with a null class")
    from fmkit_image.dit import DiTOptions, build_dit

    register("dit", build_dit, options=DiTOptions,
             description="DiT transformer (Peebles & Xie 2023): patches, adaLN-Zero blocks, class embedding with a "
                         "null class")


@hookimpl
def register_recipes(register):
    register_recipe_folder(register, _HERE / "recipes")


@hookimpl
def register_metrics(register):
    from fmkit_image.metrics import ClassifierMetric, ClassifierMetricOptions

    register("image_classifier", ClassifierMetric, options=ClassifierMetricOptions,
             description="accuracy of class-conditional samples + classifier-Fréchet distance (and its real floor)")
    from fmkit_image.fid import FIDMetric, FIDOptions

    register("fid", FIDMetric, options=FIDOptions,
             description="real FID (torchmetrics' Inception) from local weights: pip install 'fmkit-image[fid]'")


@hookimpl
def register_writers(register):
    from fmkit_image.writers import GridOptions, GridWriter, ImageSamplesOptions, ImageSamplesWriter

    register("image_grid", GridWriter, options=GridOptions,
             description="PNG grid of samples (torchvision make_grid), one row per class, clamped to 8 bits")
    register("image_samples", ImageSamplesWriter, options=ImageSamplesOptions,
             description="the samples as uint8 images in safetensors (raw: true keeps the solver's floats)")


@hookimpl
def register_commands(app):
    from fmkit_image.cli import app as image_app

    app.add_typer(image_app, name="image")
