"""fmkit-image: U-Net conditional flow matching on images (MNIST, Fashion-MNIST, CIFAR-10, your own folders)."""
