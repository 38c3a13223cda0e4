"""Images: reading (fully decoded, turned as displayed, 8-bit RGB), folders of images,
the ImageNet preprocessing and its inverse.

The one image module of the library: the commands, the benchmark, the demo and
:mod:`captum_fdcam.evaluation` read images here. Only the standard library is imported
at module level (``captum-fdcam --help`` reads :data:`IMAGE_SUFFIXES`); numpy, PIL and
torch are imported by the functions that decode.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from PIL import Image
    from torch import Tensor

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp"}


def first_line(err: BaseException) -> str:
    """``"TypeName: message"`` on one line, at most 300 characters of message."""
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


def folder_images(folder: Path) -> list[Path]:
    """The images of a folder, sorted by name: its files with an image suffix. Hidden files
    (``.DS_Store``, the ``._photo.jpg`` AppleDouble files macOS leaves on shared drives),
    sub-folders and other files are skipped."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".") and p.is_file()
    )


def image_paths(specs: Sequence[str | Path]) -> list[Path]:
    """The images named by ``specs``: files as given, folders by :func:`folder_images`.

    Raises:
        FileNotFoundError: a path that does not exist, or a folder without images.
    """
    paths: list[Path] = []
    for spec in specs:
        path = Path(spec)
        if path.is_dir():
            found = folder_images(path)
            if not found:
                raise FileNotFoundError(
                    f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) in {path}"
                )
            paths += found
        elif path.is_file():
            paths.append(path)
        else:
            raise FileNotFoundError(f"no such file or folder: {path}")
    return paths


def sample_image() -> Path:
    """The bundled sample photo: scikit-image's ``chelsea`` (a cat; public domain)."""
    from skimage import data

    return Path(data.__file__).parent / "chelsea.png"


def to_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB, with 16-bit (and 32-bit integer) greyscale scaled to 0-255.

    PIL's own ``convert("RGB")`` clips a 16-bit image (modes ``I;16``, ``I;16B``, ...;
    ``I`` in older Pillow versions) at 255, which turns almost every pixel white.
    Integer images are taken as 16-bit (divided by 257, so that 65535 is 255); 32-bit
    float images (mode ``F``) must hold values in [0, 1]. 16-bit RGB PNGs need nothing:
    PIL reads them as 8-bit RGB.

    Raises:
        ValueError: a float image with values outside [0, 1], or a mode PIL cannot
            convert to RGB.
    """
    import numpy as np
    from PIL import Image

    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64) / 257
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        values = np.asarray(image, dtype=np.float64)
        if values.size and not (
            np.isfinite(values).all() and 0 <= values.min() <= values.max() <= 1
        ):
            raise ValueError(
                "a 32-bit float image needs values in [0, 1], got "
                f"{values.min():g} to {values.max():g}"
            )
        image = Image.fromarray(np.rint(values * 255).astype(np.uint8), "L")
    return image.convert("RGB")


def read_rgb(path: str | Path) -> Image.Image:
    """The image file ``path``, fully decoded, turned as displayed (its EXIF orientation
    applied), as 8-bit RGB (see :func:`to_rgb`).

    Raises:
        OSError: not an image PIL can read, or a truncated one (decoding reads it all).
        ValueError: see :func:`to_rgb`.
    """
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image.load()
        # A phone photo's pixels are stored as the sensor saw them; its EXIF orientation
        # says how to turn them to be seen as displayed, and as a reader expects.
        return to_rgb(ImageOps.exif_transpose(image))


def preprocess(
    image: Image.Image | Any,
    size: int = 224,
    *,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    crop_fraction: float = 224 / 256,
) -> Tensor:
    """The usual ImageNet preprocessing: resize 256, centre crop 224, mean/std.

    Args:
        image: a PIL image or an (H, W, 3) or (H, W) uint8 or uint16 array; greyscale
            is converted to RGB, 16-bit images scaled to 8 bits (:func:`to_rgb`).
        size: the crop size (the resize is ``size / crop_fraction``).
        mean: per-channel mean subtracted (of values in [0, 1]). Default: ImageNet's
        std: per-channel standard deviation divided by. Default: ImageNet's
        crop_fraction: the share of the resized shorter side the centre crop keeps
            (timm's ``crop_pct``). Default: 224 / 256

    Returns:
        (1, 3, size, size) float tensor.
    """
    import numpy as np
    import torch
    from PIL import Image
    from torchvision.transforms import v2

    if not isinstance(image, Image.Image):
        array = np.asarray(image)
        if array.dtype == np.uint16:  # PIL has no 16-bit RGB mode
            array = np.rint(array / 257).astype(np.uint8)
        image = Image.fromarray(array)
    transform = v2.Compose(
        [
            v2.ToImage(),
            v2.Resize(round(size / crop_fraction), antialias=True),
            v2.CenterCrop(size),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize(list(mean), list(std)),
        ]
    )
    return transform(to_rgb(image)).unsqueeze(0)


def denormalize(
    x: Tensor, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
) -> Tensor:
    """Inverse of :func:`preprocess`'s normalisation (with the same ``mean`` and
    ``std``): (N, 3, H, W) in [0, 1]."""
    import torch

    mean_ = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std_ = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * std_ + mean_).clamp(0, 1)


def read_image(path: Path) -> Image.Image:
    """The image file, fully decoded (so that a truncated file fails here), turned as
    displayed, as 8-bit RGB with 16-bit images scaled (:func:`read_rgb`).

    Raises:
        ValueError: the file cannot be read as an image; the message is one line that
            names the file.
    """
    try:
        return read_rgb(path)
    # PIL's decoders raise many kinds of errors on a broken file (OSError, SyntaxError,
    # ValueError, struct.error, DecompressionBombError, ...); all mean the same here.
    except Exception as err:
        raise ValueError(f"cannot read image {path}: {first_line(err)}") from err


def load_image(path: Path, size: int = 224) -> Tensor:
    """The image file as the model's input: (1, 3, size, size), ImageNet-normalised
    (:func:`read_image`, then :func:`preprocess`)."""
    return preprocess(read_image(path), size=size)
