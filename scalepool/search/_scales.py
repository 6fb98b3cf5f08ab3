"""Fast optuna searches on a prediction cache: pool values, refinement settings, routers.

Every objective is in meV/Å and minimised; the test split is touched only by
:meth:`ScaleSearch.evaluate`, the re-run of the best trial.

========  ======================================  ===================================  =================
space     parameters                              objective                            cost per trial
========  ======================================  ===================================  =================
pool      ``n_inner`` in [0, max_inner] and       oracle-routed val MAE of the pool    milliseconds
          ``s0 .. s{n_inner-1}`` in (0, 1)         {0, 1, s...} + ``size_penalty``
                                                  per inner scale (upper bound)
refine    ``tol`` (log), ``max_size``,            pool refined on train, oracle-       tens of ms
          ``proposals``                           routed val MAE + ``size_penalty``
                                                  per inner scale
router    ``kind`` (hard/continuous), ``hidden``, router fitted on train, its          seconds
          ``layers``, ``lr`` (log), ``steps``     deployable val MAE
========  ======================================  ===================================  =================

The size penalty (meV/Å per scale beyond the anchors) makes the pool
searches trade accuracy against pool size; without it more scales always win
an oracle.
"""

from __future__ import annotations

import optuna

from ..data import PredictionCache
from ..scales import ContinuousRouter, HardRouter, RoutingProblem, ScalePool, refine_pool
from ..units import EV_TO_MEV

SPACES = ("pool", "refine", "router")
PROPOSAL_CHOICES = ("midpoints", "midpoints+quantiles")


class ScaleSearch:
    """Objective and best-trial re-run of one search space on one cache.

    Parameters
    ----------
    cache : a prediction cache with train, val and test frames
    space : one of :data:`SPACES`
    granularity, loss : routing samples and loss (``"mae"`` reports meV/Å)
    max_inner : most scales besides the anchors (pool and refine spaces)
    size_penalty : meV/Å added per scale beyond the anchors
    max_router_steps : upper end of the router ``steps`` range
    device : torch device of the routers
    """

    def __init__(
        self,
        cache: PredictionCache,
        space: str = "pool",
        granularity: str = "atom",
        loss: str = "mae",
        max_inner: int = 6,
        size_penalty: float = 0.1,
        max_router_steps: int = 400,
        seed: int = 0,
        device: str = "cpu",
    ):
        if space not in SPACES:
            raise ValueError(f"space must be one of {SPACES}, got {space!r}")
        self.cache, self.space, self.granularity, self.loss = cache, space, granularity, loss
        self.max_inner, self.size_penalty = int(max_inner), float(size_penalty)
        self.max_router_steps, self.seed, self.device = int(max_router_steps), int(seed), device
        self.factor = EV_TO_MEV if loss == "mae" else EV_TO_MEV**2
        self.val = RoutingProblem(cache, "val", granularity, loss)
        self._train_problem = None
        self._router_pool = None

    # ------------------------------------------------------------------ pools
    def pool_from(self, params: dict) -> ScalePool:
        """The pool a ``pool`` or ``refine`` trial's parameters describe."""
        if self.space == "pool":
            return ScalePool((0.0, 1.0, *(params[f"s{i}"] for i in range(params["n_inner"]))))
        if self._train_problem is None:
            self._train_problem = RoutingProblem(self.cache, "train", self.granularity, self.loss)
        pool, _ = refine_pool(
            self._train_problem,
            tol=params["tol"],
            max_size=params["max_size"],
            proposals=tuple(params["proposals"].split("+")),
        )
        return pool

    def router_pool(self) -> ScalePool:
        """The pool of hard routers: refined on val with the default settings (computed once)."""
        if self._router_pool is None:
            self._router_pool, _ = refine_pool(self.val)
        return self._router_pool

    def _pool_objective(self, problem: RoutingProblem, pool: ScalePool) -> float:
        _, _, loss = problem.hard_oracle(pool)
        return self.factor * loss + self.size_penalty * (len(pool) - 2)

    # ------------------------------------------------------------------ trials
    def suggest(self, trial: optuna.Trial) -> dict:
        if self.space == "pool":
            n_inner = trial.suggest_int("n_inner", 0, self.max_inner)
            return {
                "n_inner": n_inner,
                **{f"s{i}": trial.suggest_float(f"s{i}", 0.0, 1.0) for i in range(n_inner)},
            }
        if self.space == "refine":
            return {
                "tol": trial.suggest_float("tol", 1e-5, 1e-1, log=True),
                "max_size": trial.suggest_int("max_size", 3, self.max_inner + 2),
                "proposals": trial.suggest_categorical("proposals", PROPOSAL_CHOICES),
            }
        return {
            "kind": trial.suggest_categorical("kind", ("hard", "continuous")),
            "hidden": trial.suggest_categorical("hidden", (0, 16, 32, 64)),
            "layers": trial.suggest_int("layers", 1, 3),
            "lr": trial.suggest_float("lr", 1e-3, 5e-2, log=True),
            "steps": trial.suggest_int("steps", 50, self.max_router_steps, step=50),
        }

    def __call__(self, trial: optuna.Trial) -> float:
        params = self.suggest(trial)
        if self.space in ("pool", "refine"):
            pool = self.pool_from(params)
            trial.set_user_attr("pool", list(pool.scales))
            return self._pool_objective(self.val, pool)
        router = self._fit_router(params)
        return self.factor * self.val.routed_loss(
            router.predict_scales(self.cache.select("val", labels=False))
        )

    def _fit_router(self, params: dict):
        options = dict(
            granularity=self.granularity,
            loss=self.loss,
            hidden=params["hidden"],
            layers=params["layers"],
            lr=params["lr"],
            steps=params["steps"],
            seed=self.seed,
            device=self.device,
        )
        router = (
            HardRouter(self.router_pool(), **options)
            if params["kind"] == "hard"
            else ContinuousRouter(**options)
        )
        return router.fit(self.cache.select("train"))

    # ------------------------------------------------------------------ best trial
    def evaluate(self, params: dict) -> dict:
        """Re-run the best parameters and score them on the test split (meV/Å).

        Pool spaces report oracle routing over the pool (upper bound) beside
        the anchors' hard oracle; the router space reports the deployable test MAE.
        """
        test = RoutingProblem(self.cache, "test", self.granularity, self.loss)
        out: dict = {
            "space": self.space,
            "params": dict(params),
            "unit": "meV/Å" if self.loss == "mae" else "(meV/Å)^2",
        }
        if self.space in ("pool", "refine"):
            pool = self.pool_from(params)
            out.update(
                pool=list(pool.scales),
                val_objective=self._pool_objective(self.val, pool),
                test_pool_oracle=self.factor * test.hard_oracle(pool)[2],
                test_anchor_oracle=self.factor * test.hard_oracle((0.0, 1.0))[2],
                test_continuous_oracle=self.factor * test.routed_loss(test.continuous_oracle()),
                upper_bound=True,
            )
            return out
        router = self._fit_router(params)
        val_scales = router.predict_scales(self.cache.select("val", labels=False))
        test_scales = router.predict_scales(self.cache.select("test", labels=False))
        out.update(
            val_objective=self.factor * self.val.routed_loss(val_scales),
            test_router=self.factor * test.routed_loss(test_scales),
            test_continuous_oracle=self.factor * test.routed_loss(test.continuous_oracle()),
            upper_bound=False,
        )
        return out
