"""A visitor's uploaded image: checked (size, format) and brought to the model's input format."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mape.base.errors import MapeError

MAX_IMAGE_SIDE = 4096


MAX_IMAGE_BYTES = 10 * 2**20


def load_user_image(path: str, size: int, channels: int, mnist_like: bool) -> tuple[np.ndarray, str]:
    """Read an uploaded image and bring it to the model's input format.

    Returns a uint8 array (size, size) for one channel or (size, size, 3), and a note on what was
    done. Grayscale digits are centred on a square canvas and, when the background is light, inverted
    (MNIST digits are white on black). Raises MapeError with a clear message for bad files."""
    from PIL import Image, UnidentifiedImageError

    if not path:
        raise MapeError("Upload an image first (PNG, JPEG, WebP, BMP or GIF).")
    p = Path(path)
    try:
        nbytes = p.stat().st_size
    except OSError:
        raise MapeError("The uploaded image could not be read; please upload it again.") from None
    if nbytes > MAX_IMAGE_BYTES:
        raise MapeError(f"The image is {nbytes / 2**20:.1f} MB; the limit is {MAX_IMAGE_BYTES // 2**20} MB.")
    try:
        with Image.open(p) as im:
            fmt = im.format
            w, h = im.size
            if w > MAX_IMAGE_SIDE or h > MAX_IMAGE_SIDE:
                raise MapeError(f"The image is {w}×{h} pixels; at most {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE} is accepted.")
            if w < 8 or h < 8:
                raise MapeError(f"The image is only {w}×{h} pixels; at least 8×8 is needed.")
            im.load()
            im = im.convert("RGBA") if im.mode in ("P", "LA", "RGBA") else im
            if im.mode == "RGBA":  # composite transparency onto white
                bg = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(bg, im)
            im = im.convert("L" if channels == 1 else "RGB")
    except MapeError:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise MapeError("That file is not an image this app can read; upload a PNG, JPEG, WebP, BMP or GIF.") from None
    notes = [f"{fmt or 'image'} {w}×{h}"]
    if channels == 1:
        arr = np.array(im, dtype=np.uint8)  # a writable copy (np.asarray of a PIL image is read-only)
        if mnist_like:
            border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
            if border.mean() > 127:
                arr = 255 - arr
                notes.append("inverted (light background → MNIST's white-on-black)")
            side = max(arr.shape)
            canvas = np.zeros((side, side), dtype=np.uint8)
            y0, x0 = (side - arr.shape[0]) // 2, (side - arr.shape[1]) // 2
            canvas[y0:y0 + arr.shape[0], x0:x0 + arr.shape[1]] = arr
            arr = canvas
        out = np.array(Image.fromarray(arr).resize((size, size), Image.BILINEAR), dtype=np.uint8)
        notes.append(f"converted to grayscale {size}×{size}")
    else:
        out = np.array(im.resize((size, size), Image.BILINEAR), dtype=np.uint8)
        notes.append(f"resized to {size}×{size} RGB")
    return out, ", ".join(notes) + "."
