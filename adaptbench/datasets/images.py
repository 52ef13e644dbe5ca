"""A list of (image path, label) as a torch Dataset, with errors that name the file."""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ..errors import AdaptbenchError

Sample = tuple[Path, int]


class ImageListDataset(Dataset):
    """Images read with PIL as RGB, then ``transform``; ``source`` names the split in errors."""

    def __init__(self, samples: list[Sample], transform=None, source: str = ""):
        self.samples = list(samples)
        self.transform = transform
        self.source = source

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int):
        path, label = self.samples[index]
        image = load_rgb(path, self.source)
        if self.transform is not None:
            image = self.transform(image)
        return image, label


def load_rgb(path: Path, source: str = "") -> Image.Image:
    """Decode ``path`` fully (so truncated files fail here, naming the path)."""
    listed = f" (listed in {source})" if source else ""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except FileNotFoundError:
        raise AdaptbenchError(f"image {path}{listed} does not exist") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise AdaptbenchError(
            f"cannot read image {path}{listed}: {reason}; expected a readable image file"
        ) from None


def check_images_exist(samples: list[Sample], source: str) -> None:
    """Fail before training when listed images are missing (existence only: fast)."""
    missing = [path for path, _ in samples if not os.path.exists(path)]
    if missing:
        more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
        raise AdaptbenchError(f"image {missing[0]}{more} listed in {source} does not exist")
