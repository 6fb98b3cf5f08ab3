"""Figures drawn from saved study results only, in one shared style (PNG and PDF).

:func:`make_figures` draws every figure whose results exist; each entry of
:data:`FIGURES` is a function of the results root that returns a figure or
``None``.  The style lives in ``scalepool.mplstyle`` beside this file.
"""

from ._make import FIGURES, KEY_FIGURES, copy_figures, make_figures
from ._memory import (
    MEMORY_TARGETS_KB_PER_ATOM,
    draw_memory_figure,
    load_memory_results,
    memory_summary_markdown,
    memory_table_markdown,
)
from ._scale_figures import draw_refinement_history
from ._style import COLORS, FORMATS, STYLE, save, use_style

__all__ = [
    "COLORS",
    "FIGURES",
    "FORMATS",
    "KEY_FIGURES",
    "MEMORY_TARGETS_KB_PER_ATOM",
    "STYLE",
    "copy_figures",
    "draw_memory_figure",
    "draw_refinement_history",
    "load_memory_results",
    "make_figures",
    "memory_summary_markdown",
    "memory_table_markdown",
    "save",
    "use_style",
]
