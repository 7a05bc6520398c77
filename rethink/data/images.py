"""Decoding an image file into the 8-bit RGB image the model takes, whatever the file's pixel format.

:func:`read_rgb` opens the file with PIL, applies its EXIF orientation (as detectron2's ``read_image``)
and converts by PIL mode:

=====================================  ======================================================================
mode                                   conversion
=====================================  ======================================================================
RGB                                    as is (16-bit RGB/RGBA PNGs are read by PIL as RGB/RGBA, high byte)
1, L, P, RGBA, RGBa, RGBX, CMYK,       PIL's ``convert("RGB")``, as detectron2: alpha (and palette
LA, La, PA, YCbCr                      transparency) dropped, not composited
I;16, I;16L, I;16B, I;16N              16-bit grey: the high byte (v >> 8) on all three channels, so a
                                       16-bit copy of an 8-bit image (v * 257) gives back the 8-bit image
I                                      32-bit integer grey (older PILs read 16-bit PNGs so): taken as
                                       16-bit, v >> 8; refused when a value is outside 0..65535
F and anything else                    refused: a float image has no defined range (0..1? 0..255?)
=====================================  ======================================================================

Every failure (missing, truncated or undecodable file, decompression bomb, refused mode) is a
:class:`DatasetError` naming the file, the image id and the dataset.
"""
import logging
import warnings

import numpy as np
from PIL import Image, ImageOps

from .errors import DatasetError

logger = logging.getLogger(__name__)

CONVERTIBLE = frozenset({"RGB", "1", "L", "P", "RGBA", "RGBa", "RGBX", "CMYK", "LA", "La", "PA", "YCbCr"})
SIXTEEN_BIT = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def _to_rgb(im: Image.Image, where: str) -> Image.Image:
    if im.mode == "RGB":
        return im
    if im.mode in CONVERTIBLE:
        with warnings.catch_warnings():  # PIL's note on palette transparency: dropped, as detectron2 does
            warnings.simplefilter("ignore", UserWarning)
            return im.convert("RGB")
    if im.mode in SIXTEEN_BIT or im.mode == "I":
        a = np.asarray(im)
        if im.mode == "I" and a.size and (int(a.min()) < 0 or int(a.max()) > 0xFFFF):
            raise DatasetError(f"{where}: 32-bit integer image with values {int(a.min())}..{int(a.max())}, outside "
                               f"the 16-bit range 0..65535 that is converted (v >> 8); save it as 8 or 16 bits")
        grey = (a.astype(np.uint32) >> 8).astype(np.uint8)
        return Image.fromarray(np.repeat(grey[:, :, None], 3, axis=2), "RGB")
    raise DatasetError(f"{where}: PIL mode {im.mode!r} is not converted to RGB (float and other modes have no "
                       f"defined 8-bit range); save the image as 8-bit RGB, grey or palette, or 16-bit grey")


def read_rgb(path: str, image_id: int, dataset: str) -> Image.Image:
    """The image at `path` as a loaded 8-bit RGB PIL image, EXIF orientation applied (see the module
    doc). Errors name the file, the image id and the dataset."""
    where = f"{path}: image id {image_id} of dataset {dataset}"
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im)  # a loaded copy
            rgb = _to_rgb(im, where)
            rgb.load()
    except DatasetError:
        raise
    except FileNotFoundError:
        raise DatasetError(f"{path}: image file not found (image id {image_id} of dataset {dataset})") from None
    except Image.DecompressionBombError as e:
        raise DatasetError(f"{where}: refused as a possible decompression bomb: {e} (raise PIL.Image.MAX_IMAGE_PIXELS "
                           f"if the image is genuine)") from None
    except Exception as e:  # decoders raise OSError, SyntaxError, ValueError, EOFError, ...
        raise DatasetError(f"{where}: cannot decode the image ({type(e).__name__}: {e})") from None
    return rgb
