"""Import every study module so that each registers itself; :data:`ORDER` is the pipeline order."""

from . import (  # noqa: F401
    _branch_comparison,
    _generator_swap,
    _oracle_table,
    _pool_refinement,
    _router_study,
    _search_study,
)

#: The order in which ``scalepool reproduce`` runs the studies.
ORDER = ("branch_comparison", "oracle_table", "pool_refinement", "routers", "generator_swap", "search")
