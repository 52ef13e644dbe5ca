"""A list of (image path, label) as a torch Dataset, with errors that name the file.

Both readers (``vtab.py``, ``fgvc.py``) and the generated micro tasks end here. Existence
is checked up front for a whole split (cheap: one ``stat`` per image); decoding problems
can only be found when an image is read, so ``__getitem__`` turns them into one-line
:class:`AdaptbenchError` messages that name the file and the split file that listed it.
"""

from __future__ import annotations

import os
from pathlib import Path

from PIL import Image
from torch.utils.data import Dataset

from ..errors import AdaptbenchError

Sample = tuple[Path, int]


class ImageListDataset(Dataset):
    """Images read with PIL as RGB, then ``transform``; ``source`` names the split in errors.

    Holds only paths, ints and the transform, so it pickles into DataLoader workers.
    """

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
    """Decode ``path`` completely as RGB, so a truncated file fails here, naming the path."""
    try:
        with Image.open(path) as image:
            return image.convert("RGB")  # convert() forces the full decode
    except FileNotFoundError:
        raise unreadable_image_error(path, source, "the file does not exist") from None
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        # PIL reports undecodable data as UnidentifiedImageError (an OSError), truncated
        # data as OSError, and some broken headers as ValueError or SyntaxError.
        raise unreadable_image_error(path, source, err) from None


def check_images_exist(samples: list[Sample], source: str) -> None:
    """Fail before training when listed images are missing (existence only: fast)."""
    missing = [path for path, _ in samples if not os.path.exists(path)]
    if missing:
        raise AdaptbenchError(
            f"image {os.path.abspath(missing[0])} listed in {source} does not exist "
            f"({len(missing)} of the {len(samples)} listed images are missing); "
            f"expected every listed path to exist"
        )


def unreadable_image_error(path: Path, source: str, reason: str | BaseException) -> AdaptbenchError:
    """The one-line error for an image that cannot be decoded (``source``: who listed it)."""
    if isinstance(reason, BaseException):
        text = str(reason).strip()
        reason = text.splitlines()[0] if text else type(reason).__name__
    listed = f" (listed in {source})" if source else ""
    return AdaptbenchError(
        f"cannot read image {os.path.abspath(path)}{listed}: {reason}; expected a readable image file"
    )
