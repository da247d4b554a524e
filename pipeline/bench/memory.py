"""The memory calculator, re-exported for the benchmarks (it lives in ``pipeline.memory``:
the flows size chunks and time blocks with it, and nothing in a run imports ``pipeline.bench``)."""

from ..memory import *  # noqa: F403
from ..memory import __all__  # noqa: F401
