"""The release's recipe as the AdaInf release runs it: one view as PIL + torchvision transforms
(``solo-learn/solo/data/pretrain_dataloader.py``, PKU-ML/adainf), from the knobs of
``loaders.recipe.augment.ViewAug``. The reference loader (``bench.loader``) and the peers (``bench.peers``) all
transform with it, so every row of the loader benchmark does the same work per sample.
"""

from __future__ import annotations

import random


def torchvision_transform(view):
    """One view of the recipe as torchvision transforms (the knobs of ``loaders.recipe.augment.ViewAug``)."""
    from torchvision import transforms as T

    bicubic = T.InterpolationMode.BICUBIC
    ops = [T.RandomResizedCrop(view.size, scale=view.crop_scale, ratio=view.crop_ratio, interpolation=bicubic)]
    if view.jitter_p > 0:
        jitter = T.ColorJitter(view.brightness, view.contrast, view.saturation, view.hue)
        ops.append(T.RandomApply([jitter], p=view.jitter_p))
    if view.gray_p > 0:
        ops.append(T.RandomGrayscale(p=view.gray_p))
    if view.blur_p > 0:
        ops.append(T.RandomApply([PILBlur(view.blur_sigma)], p=view.blur_p))  # solo-learn's PIL blur
    if view.solarize_p > 0:
        ops.append(T.RandomSolarize(128, p=view.solarize_p))
    return T.Compose([*ops, T.RandomHorizontalFlip(view.flip_p), T.ToTensor(), T.Normalize(view.mean, view.std)])


class PILBlur:
    def __init__(self, sigma):
        self.sigma = sigma

    def __call__(self, img):
        from PIL import ImageFilter

        return img.filter(ImageFilter.GaussianBlur(radius=random.uniform(*self.sigma)))
