"""The exceptions micache raises: one class per ``ErrorCode``, all rooted at :class:`Error`.

Every failure of a micache call is a ``micache::Error`` in C++; Python gets
the subclass named for its code (``HookError`` for ``ErrorCode.Hook``), whose
``code`` attribute is that code and whose message is the C++ message alone.
Each class is also the Python built-in that names the same kind of failure,
so ``except IndexError`` catches a layer out of range and ``except OSError``
a file that cannot be read. A call that raises leaves its object unchanged.
"""

from __future__ import annotations

from ._micache import ErrorCode


class Error(Exception):
    """Base of every micache exception; ``code`` says which rule was broken."""

    code: ErrorCode


class HookError(Error, IndexError):
    """A layer, position, batch or head out of range; an empty cache."""

    code = ErrorCode.Hook


class ShapeError(Error, ValueError):
    """Rank or dimensions wrong, or inconsistent across layers."""

    code = ErrorCode.Shape


class DimensionMismatchError(Error, ValueError):
    """A vector or list of the wrong length (bitpolar)."""

    code = ErrorCode.DimensionMismatch


class NonFiniteInputError(Error, ValueError):
    """NaN or infinity where a finite value is required (bitpolar)."""

    code = ErrorCode.NonFiniteInput


class EmptyInputError(Error, ValueError):
    """A count that must be positive is zero, or attention over an empty cache (bitpolar)."""

    code = ErrorCode.EmptyInput


class ZeroDimensionError(Error, ValueError):
    """A vector dimension (head_dim) is zero (bitpolar)."""

    code = ErrorCode.ZeroDimension


class OddDimensionError(Error, ValueError):
    """A vector dimension (head_dim) is odd (bitpolar)."""

    code = ErrorCode.OddDimension


class InvalidBitWidthError(Error, ValueError):
    """Bits per coordinate outside what is supported (bitpolar: 1..=16; micache: 1..=8)."""

    code = ErrorCode.InvalidBitWidth


class ZeroProjectionsError(Error, ValueError):
    """The QJL projection count is zero (bitpolar)."""

    code = ErrorCode.ZeroProjections


class DimensionTooLargeError(Error, ValueError):
    """A dimension or projection count above bitpolar's compact-format limit (bitpolar)."""

    code = ErrorCode.DimensionTooLarge


class ConfigError(Error, ValueError):
    """An invalid setting or argument value, an unsupported dtype or device."""

    code = ErrorCode.Config


class OutOfMemoryError(Error, MemoryError):
    """An allocation failed; the object is unchanged."""

    code = ErrorCode.OutOfMemory


class BackendError(Error, RuntimeError):
    """A backend failed or is not built; CUDA's error text is included."""

    code = ErrorCode.Backend


class IoError(Error, OSError):
    """Reading or writing a file failed."""

    code = ErrorCode.Io


__all__ = [
    "Error",
    "HookError",
    "ShapeError",
    "DimensionMismatchError",
    "NonFiniteInputError",
    "EmptyInputError",
    "ZeroDimensionError",
    "OddDimensionError",
    "InvalidBitWidthError",
    "ZeroProjectionsError",
    "DimensionTooLargeError",
    "ConfigError",
    "OutOfMemoryError",
    "BackendError",
    "IoError",
]
