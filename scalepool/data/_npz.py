"""Reading ``.npz`` dataset archives: every array, with errors naming the file and the array."""

from __future__ import annotations

import json
import zipfile
import zlib
from pathlib import Path
from typing import Any

import numpy as np

from . import _keys as K
from ._sanity import DatasetError

#: First bytes of files that are not .npz archives, and what they are.
_SIGNATURES = (
    (b"\x93NUMPY", "a single .npy array, not an .npz archive of named arrays"),
    (b"\x89HDF", "an HDF5 file (H5MD?); read it with read_frames(..., format='h5md')"),
    (b"\x00\x00\x07\xc9", "a GROMACS TRR trajectory; read it with read_frames and a topology"),
    (b"\x1f\x8b", "gzip-compressed; decompress it first"),
    (b"\x80", "a Python pickle; scalepool never unpickles data files"),
)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")


def _not_npz_reason(path: Path, head: bytes) -> str:
    """What a file that does not start like a zip archive is, for the error message."""
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            return what
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError:
        return f"not a zip archive (it starts with bytes {head[:8]!r})"
    lines = text.splitlines()
    first = lines[0].strip() if lines else ""
    second = lines[1] if len(lines) > 1 else ""
    if first.isdigit() and ("Properties=" in second or "Lattice=" in second or len(lines) > 2):
        if path.suffix in (".extxyz", ".xyz"):
            fix = f"convert it first: scalepool data convert {path} {path.with_suffix('.npz')}"
        else:
            fix = f"rename it to {path.with_suffix('.extxyz').name}, or read it with read_frames(..., format='extxyz')"
        return f"an (extended) XYZ text file, not a zip archive; {fix}"
    if first.startswith(("ATOM", "HETATM", "CRYST1", "HEADER", "REMARK", "MODEL")):
        return "a PDB text file, not a zip archive"
    return f"a text file, not a zip archive (its first line is {first[:60]!r})"


def _read_npz(path: Path) -> dict[str, Any]:
    """Every array of an ``.npz`` file; errors name the file, the array and the problem."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    if not head.startswith(_ZIP_MAGIC):
        raise DatasetError(f"{path} is not a readable .npz file: it is {_not_npz_reason(path, head)}")
    try:
        archive = np.load(path, allow_pickle=False)
    except (
        zipfile.BadZipFile,
        zlib.error,
        EOFError,
        ValueError,
        OSError,
        KeyError,
        NotImplementedError,
    ) as err:
        raise DatasetError(
            f"{path} is not a readable .npz file (truncated or corrupt?): {type(err).__name__}: {err}"
        ) from err
    arrays = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = archive[key]
            except ValueError as err:
                if "pickle" in str(err).lower() or "object arrays" in str(err).lower():
                    raise DatasetError(
                        f"{path}: array '{key}' holds Python objects (a pickled object array); scalepool "
                        "datasets hold numbers and one JSON string, and never unpickle data files"
                    ) from err
                raise DatasetError(f"{path}: array '{key}' is unreadable (corrupt header?): {err}") from err
            except MemoryError as err:
                raise DatasetError(
                    f"{path}: array '{key}' claims a shape too large to load (corrupt header?)"
                ) from err
            except (
                zipfile.BadZipFile,
                zlib.error,
                EOFError,
                OSError,
                KeyError,
                NotImplementedError,
                RuntimeError,
            ) as err:  # RuntimeError: zipfile's "encrypted member" on a flipped flag bit
                raise DatasetError(
                    f"{path}: array '{key}' is unreadable (truncated or corrupt?): {type(err).__name__}: {err}"
                ) from err
    return arrays


def _numeric(path: Path, key: str, value: Any, kinds: str = "iuf") -> np.ndarray:
    """``value`` as an array whose dtype kind is in ``kinds``; DatasetError naming the array otherwise."""
    array = np.asarray(value)
    if array.dtype.kind not in kinds:
        raise DatasetError(
            f"{path}: array '{key}' has dtype {array.dtype} ({'integers' if kinds == 'iu' else 'numbers'} expected)"
        )
    return array


def _read_meta(path: Path, value: Any) -> dict[str, Any]:
    """The JSON object stored in the ``meta`` array; DatasetError naming the file and field otherwise."""
    array = np.asarray(value)
    if array.dtype.kind not in "US" or array.size != 1:
        raise DatasetError(
            f"{path}: array '{K.META}' must be one JSON string, got dtype {array.dtype} shape {array.shape}"
        )
    text = array.reshape(()).item()
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as err:
            raise DatasetError(f"{path}: array '{K.META}' is not UTF-8 text: {err}") from err
    try:
        meta = json.loads(text)
    except json.JSONDecodeError as err:
        raise DatasetError(
            f"{path}: array '{K.META}' is not valid JSON ({err.msg} at line {err.lineno} column {err.colno}; "
            f"it starts {text[:40]!r})"
        ) from err
    if not isinstance(meta, dict):
        raise DatasetError(
            f"{path}: array '{K.META}' must hold a JSON object, got a JSON {type(meta).__name__}"
        )
    return meta


def _check_finite(name: str, array: np.ndarray) -> None:
    bad = ~np.isfinite(array)
    if bad.any():
        first = np.argwhere(bad)[0].tolist()
        raise DatasetError(
            f"{name} contains {int(bad.sum())} non-finite value(s) (NaN or inf); first at index {first}"
        )
