"""Key prefixes for the files each rank writes.

S3 partitions a bucket by key prefix; spreading ranks over prefixes that
differ in their first character spreads the request rate over partitions.
The strings produced here match s3torchconnector 1.5.0 exactly, so a
checkpoint laid out by either library looks the same.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import List, Optional

__all__ = [
    "S3PrefixStrategyBase",
    "DefaultPrefixStrategy",
    "NumericPrefixStrategy",
    "BinaryPrefixStrategy",
    "HexPrefixStrategy",
    "RoundRobinPrefixStrategy",
]


def _epoch_part(epoch_num: Optional[int]) -> str:
    return "" if epoch_num is None else f"epoch_{epoch_num}/"


class S3PrefixStrategyBase(ABC):
    """Base class for strategies that name the prefix of each rank's files.

    Subclasses implement :meth:`generate_prefix`; calling the strategy with a
    rank is the same as calling ``generate_prefix(rank)``.
    """

    def __init__(self) -> None:
        pass

    def __call__(self, rank: int) -> str:
        """Return the prefix for ``rank``."""
        return self.generate_prefix(rank)

    @abstractmethod
    def generate_prefix(self, rank: int) -> str:
        """Return the storage prefix for ``rank``."""


class DefaultPrefixStrategy(S3PrefixStrategyBase):
    """Torch's own naming: ``__{rank}_`` directly under the checkpoint path."""

    def generate_prefix(self, rank: int) -> str:
        """Return ``__{rank}_``."""
        return f"__{rank}_"


class NumericPrefixStrategy(S3PrefixStrategyBase):
    """Prefixes made of the rank's digits in ``base``, reversed.

    The prefix index (``rank % prefix_count``) is written in ``base``, padded
    with zeros to the prefix length and reversed, so the fastest-changing digit
    comes first and neighbouring ranks land on different partitions.

    Parameters
    ----------
    base : int
        Numeric base of the digits (2 for binary, 16 for hexadecimal).
    epoch_num : int, optional
        Adds ``epoch_{epoch_num}/`` after the prefix when given.
    min_prefix_length : int, default 10
        Minimum number of digits; more are used if ``prefix_count`` needs them.
    prefix_count : int, optional
        Number of distinct prefixes. Defaults to the world size when
        ``torch.distributed`` is initialised, else 1.

    Raises
    ------
    ValueError
        If ``min_prefix_length`` is not positive, ``epoch_num`` is not an int,
        or ``prefix_count`` is not a positive int.
    """

    def __init__(
        self,
        base: int,
        epoch_num: Optional[int] = None,
        min_prefix_length: int = 10,
        prefix_count: Optional[int] = None,
    ) -> None:
        if isinstance(min_prefix_length, bool) or not isinstance(min_prefix_length, int) or min_prefix_length < 1:
            raise ValueError(f"Minimum prefix length must be positive, got {min_prefix_length}")
        if epoch_num is not None and (isinstance(epoch_num, bool) or not isinstance(epoch_num, int)):
            raise ValueError(f"Epoch number must be None or an integer, got {epoch_num}")
        if prefix_count is not None and (
            isinstance(prefix_count, bool) or not isinstance(prefix_count, int) or prefix_count < 1
        ):
            raise ValueError(f"Prefix count must be a positive integer, got {prefix_count}")
        if isinstance(base, bool) or not isinstance(base, int) or base < 2:
            raise ValueError(f"Base must be an integer >= 2, got {base}")
        super().__init__()
        self.base = base
        self.epoch_num = epoch_num
        self.min_prefix_len = min_prefix_length
        if prefix_count is None:
            prefix_count = _world_size()
        self.prefix_count = prefix_count
        self.prefix_map = self._generate_prefix_map()

    def generate_prefix(self, rank: int) -> str:
        """Return ``<digits>/[epoch_<n>/]__{rank}_``."""
        digits = self.prefix_map[rank % len(self.prefix_map)]
        return f"{digits}/{_epoch_part(self.epoch_num)}__{rank}_"

    def _generate_prefix_map(self) -> List[str]:
        length = max(self._calculate_prefix_length(), self.min_prefix_len)
        return [self._format_number(i, length)[::-1] for i in range(self.prefix_count)]

    def _calculate_prefix_length(self) -> int:
        # Smallest digit count whose combinations cover prefix_count.
        length, combinations = 1, self.base
        while combinations < self.prefix_count:
            length += 1
            combinations *= self.base
        return length

    def _format_number(self, number: int, length: int) -> str:
        """Write ``number`` in ``self.base`` with at least ``length`` digits."""
        digits = []
        while number:
            number, digit = divmod(number, self.base)
            digits.append("0123456789abcdefghijklmnopqrstuvwxyz"[digit])
        return "".join(reversed(digits)).rjust(length, "0")


class BinaryPrefixStrategy(NumericPrefixStrategy):
    """Numeric prefixes in base 2 (characters ``0`` and ``1``)."""

    def __init__(
        self,
        epoch_num: Optional[int] = None,
        min_prefix_length: int = 10,
        prefix_count: Optional[int] = None,
    ) -> None:
        super().__init__(2, epoch_num=epoch_num, min_prefix_length=min_prefix_length, prefix_count=prefix_count)

    def _format_number(self, number: int, length: int) -> str:
        return format(number, f"0{length}b")


class HexPrefixStrategy(NumericPrefixStrategy):
    """Numeric prefixes in base 16 (``0-9a-f``)."""

    def __init__(
        self,
        epoch_num: Optional[int] = None,
        min_prefix_length: int = 10,
        prefix_count: Optional[int] = None,
    ) -> None:
        super().__init__(16, epoch_num=epoch_num, min_prefix_length=min_prefix_length, prefix_count=prefix_count)

    def _format_number(self, number: int, length: int) -> str:
        return format(number, f"0{length}x")


class RoundRobinPrefixStrategy(S3PrefixStrategyBase):
    """Distribute ranks over the user's prefixes in turn.

    Parameters
    ----------
    user_prefixes : list of str
        Prefixes to cycle through; must not be empty.
    epoch_num : int, optional
        Adds ``epoch_{epoch_num}/`` after the prefix when given.

    Raises
    ------
    ValueError
        If ``user_prefixes`` is empty.
    """

    def __init__(self, user_prefixes: List[str], epoch_num: Optional[int] = None) -> None:
        super().__init__()
        if not user_prefixes:
            raise ValueError("user_prefixes must not be empty")
        if epoch_num is not None and (isinstance(epoch_num, bool) or not isinstance(epoch_num, int)):
            raise ValueError(f"Epoch number must be None or an integer, got {epoch_num}")
        self.user_prefixes = list(user_prefixes)
        self.epoch_num = epoch_num

    def generate_prefix(self, rank: int) -> str:
        """Return ``<user_prefix>/[epoch_<n>/]__{rank}_``."""
        prefix = self.user_prefixes[rank % len(self.user_prefixes)]
        return f"{prefix}/{_epoch_part(self.epoch_num)}__{rank}_"


def _world_size() -> int:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size()
    return 1
