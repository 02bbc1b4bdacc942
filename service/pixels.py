"""Stored pixel values of one slice, decoded, with every decoding failure made specific.

Uncompressed little-endian 16-bit data is read straight from the buffer (no copy, no decoder
overhead); everything else goes through pydicom's decoders (JPEG, JPEG 2000, JPEG-LS and RLE with
the pylibjpeg plugins).
"""

from __future__ import annotations

import numpy as np
from pydicom.dataset import Dataset
from pydicom.pixels.utils import pixel_array
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from service.errors import (
    CorruptDicomError,
    NoPixelDataError,
    NotCTError,
    TruncatedDicomError,
    UnsupportedTransferSyntaxError,
)
from service.series import SliceRef

_NATIVE_LITTLE_ENDIAN = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def _transfer_syntax(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    uid = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(uid)) if uid else None


def _fast_native(ds: Dataset, ref: SliceRef) -> np.ndarray | None:
    """Zero-copy view of uncompressed single-frame 16-bit little-endian data, or None."""
    if _transfer_syntax(ds) not in _NATIVE_LITTLE_ENDIAN or ref.frame is not None:
        return None
    if ds.get("BitsAllocated") != 16 or ds.get("SamplesPerPixel", 1) != 1:
        return None
    signed = ds.get("PixelRepresentation") == 1
    bits_stored = ds.get("BitsStored", 16)
    if signed and bits_stored != 16:
        return None  # sign extension from fewer bits: leave to pydicom
    data = ds.PixelData
    count = ref.rows * ref.columns
    if len(data) < 2 * count:
        raise TruncatedDicomError(
            f"{ref.source}: pixel data holds {len(data)} bytes, {2 * count} expected."
        )
    pixels = np.frombuffer(data, dtype="<i2" if signed else "<u2", count=count)
    pixels = pixels.reshape(ref.rows, ref.columns)
    if not signed and bits_stored < 16 and int(pixels.max()) >> bits_stored:
        pixels = pixels & np.uint16((1 << bits_stored) - 1)  # unused high bits held overlays
    return pixels


def stored_pixels(ref: SliceRef) -> np.ndarray:
    """The stored (not yet rescaled) values of one plane as a 2-D integer or float array."""
    ds = ref.dataset
    if "PixelData" not in ds:
        raise NoPixelDataError(f"{ref.source} holds no pixel data.")
    try:
        fast = _fast_native(ds, ref)
        if fast is not None:
            return fast
        if ds.get("SamplesPerPixel", 1) != 1:
            raise NotCTError(
                f"{ref.source} is a colour image ({ds.get('SamplesPerPixel')} samples per pixel), "
                "not a CT reconstruction."
            )
        # One frame at a time, and not cached on the dataset: a multi-frame object is never
        # decoded whole, and a study's decoded slices are not all held until ingest ends.
        array = pixel_array(ds, index=ref.frame)
    except (TruncatedDicomError, NotCTError):
        raise
    except NotImplementedError as exc:
        raise UnsupportedTransferSyntaxError(
            f"{ref.source}: transfer syntax {_transfer_syntax(ds)} cannot be decoded ({exc})."
        ) from None
    except RuntimeError as exc:
        if "plugin" in str(exc).lower() or "decoder" in str(exc).lower():
            raise UnsupportedTransferSyntaxError(
                f"{ref.source}: no decoder for transfer syntax {_transfer_syntax(ds)} ({exc})."
            ) from None
        raise CorruptDicomError(f"{ref.source}: pixel data cannot be decoded ({exc}).") from None
    except ValueError as exc:
        text = str(exc).lower()
        if "length" in text or "expected" in text or "truncat" in text or "end of" in text:
            raise TruncatedDicomError(f"{ref.source}: pixel data is incomplete ({exc}).") from None
        raise CorruptDicomError(f"{ref.source}: pixel data cannot be decoded ({exc}).") from None
    except Exception as exc:  # decoders raise assorted types on damaged codestreams
        raise CorruptDicomError(f"{ref.source}: pixel data cannot be decoded ({exc}).") from None
    if array.shape != (ref.rows, ref.columns):
        raise CorruptDicomError(
            f"{ref.source}: decoded image is {array.shape}, not {ref.rows}x{ref.columns}."
        )
    return np.asarray(array)
