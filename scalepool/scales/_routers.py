"""Learned routers: deployable scale choices from inference-time features.

- :class:`HardRouter` picks a pool member per sample (a classifier trained to
  minimise the expected loss regret of its soft choice; argmax at inference);
- :class:`ContinuousRouter` predicts s(x) in [0, 1] with a sigmoid head,
  trained to minimise the interpolated force loss directly.

No leakage by construction: :meth:`fit` accepts only a cache whose frames are
all in the train split (``cache.select("train")``); feature scaling is
estimated there too.  Prediction needs no labels
(``cache.select("test", labels=False)`` works).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from ..data import PredictionCache
from ..data import keys as K
from ..models import router_mlp
from ._features import FEATURE_RADII, atom_features
from ._oracle import check_loss
from ._pool import ScalePool
from ._problem import RoutingProblem
from ._samples import GRANULARITIES, cache_groups


class LeakageError(ValueError):
    """A router was given frames outside the train split to fit on."""


class _Router(nn.Module):
    """Shared parts: features per sample, train-only fitting, prediction.

    Parameters
    ----------
    granularity : ``"frame"``, ``"ion"`` or ``"atom"``; a sample's features are
        the mean of its atoms' features (:func:`atom_features`)
    loss : ``"mae"`` or ``"mse"``, the force loss the router is trained on
    hidden, layers : MLP width and depth (``hidden=0``: a linear model)
    steps, batch_size, lr : Adam steps on random minibatches (full batch
        when the train set is smaller than ``batch_size``)
    radii : Å, radii of the ion-count features
    seed : initialisation and minibatch seed (fitting is deterministic)
    device : torch device of the network and the training tensors
    """

    n_outputs: int = 1

    def __init__(
        self,
        granularity: str = "atom",
        loss: str = "mae",
        hidden: int = 32,
        layers: int = 2,
        steps: int = 300,
        batch_size: int = 8192,
        lr: float = 1e-2,
        radii: tuple[float, ...] = FEATURE_RADII,
        seed: int = 0,
        device: str | torch.device = "cpu",
    ):
        super().__init__()
        if granularity not in GRANULARITIES:
            raise ValueError(f"granularity must be one of {GRANULARITIES}, got {granularity!r}")
        self.granularity, self.loss = granularity, check_loss(loss)
        self.hidden, self.layers, self.steps, self.lr = hidden, layers, steps, lr
        self.batch_size = batch_size
        self.radii, self.seed, self.device = tuple(radii), seed, torch.device(device)
        self.species: tuple[int, ...] | None = None
        self.net: nn.Module | None = None
        self.feature_names: list[str] = []

    # ------------------------------------------------------------------ features
    def _sample_features(self, cache: PredictionCache) -> tuple[torch.Tensor, object]:
        feats, names = atom_features(cache, self.radii, self.species)
        groups = cache_groups(self.granularity, cache)
        x = torch.as_tensor(groups.mean(feats), dtype=torch.float32, device=self.device)
        self.feature_names = names
        return x, groups

    def _standardise(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std

    @staticmethod
    def check_train_only(cache: PredictionCache) -> None:
        """Raise :class:`LeakageError` unless every frame is a labelled train frame."""
        if not isinstance(cache, PredictionCache):
            raise TypeError(f"routers fit on a PredictionCache, got {type(cache).__name__}")
        bad = sorted(set(np.unique(cache.split).tolist()) - {K.SPLIT_CODES["train"]})
        if bad:
            names = [k for k, v in K.SPLIT_CODES.items() if v in bad]
            raise LeakageError(
                f"routers are fitted on the train split only; got frames of split(s) {names}: "
                "pass cache.select('train')"
            )
        blocks = cache.meta.get("split_blocks")
        if blocks is not None and "frame_index" in cache.meta:
            # split codes can be relabelled; the dataset frames of the train block cannot
            start, stop = blocks["train"]
            frames = np.asarray(cache.meta["frame_index"])
            outside = frames[(frames < start) | (frames >= stop)]
            if outside.size:
                raise LeakageError(
                    f"{outside.size} frame(s) marked train lie outside the train block [{start}, {stop}) "
                    f"recorded at prediction (dataset frames {outside[:5].tolist()}...): was the split relabelled?"
                )
        recorded = cache.meta.get("split_frames")
        if recorded is not None and "frame_index" in cache.meta:  # a random split: its recorded train frames
            frames = np.asarray(cache.meta["frame_index"])
            outside = frames[~np.isin(frames, np.asarray(recorded["train"]))]
            if outside.size:
                raise LeakageError(
                    f"{outside.size} frame(s) marked train are not train frames of the random split recorded at "
                    f"prediction (dataset frames {outside[:5].tolist()}...): was the split relabelled?"
                )
        if not cache.has_labels:
            raise ValueError("fitting needs the train frames' forces_ref")

    def fit(self, train: PredictionCache):
        """Fit on the train split only (see :meth:`check_train_only`); returns ``self``."""
        self.check_train_only(train)
        self.species = tuple(sorted(set(train.numbers.tolist())))
        x, _ = self._sample_features(train)
        self.register_buffer("mean", x.mean(dim=0))
        self.register_buffer("std", x.std(dim=0).clamp_min(1e-6))
        problem = RoutingProblem(train, split="train", granularity=self.granularity, loss=self.loss)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            self.net = router_mlp(x.shape[1], self.hidden, self.n_outputs, self.layers)
        self.net.to(dtype=torch.float32, device=self.device)
        n_items, batch_loss = self._objective(problem, self._standardise(x))
        generator = torch.Generator().manual_seed(self.seed)
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        self.train_losses = []
        for _ in range(self.steps):
            index = (
                torch.arange(n_items)
                if n_items <= self.batch_size
                else torch.randint(n_items, (self.batch_size,), generator=generator)
            ).to(self.device)
            optimizer.zero_grad()
            value = batch_loss(index)
            value.backward()
            optimizer.step()
            self.train_losses.append(float(value.detach()))
        return self

    def _objective(self, problem: RoutingProblem, x: torch.Tensor):
        """``(n_items, batch_loss)``: ``batch_loss(index)`` is the training loss
        on the items ``index`` (an unbiased estimate of the full loss)."""
        raise NotImplementedError

    @torch.no_grad()
    def _outputs(self, cache: PredictionCache):
        if self.net is None:
            raise RuntimeError("the router is not fitted: call fit(cache.select('train')) first")
        x, groups = self._sample_features(cache)
        return self.net(self._standardise(x)), groups

    def predict_atom_scales(self, cache: PredictionCache) -> np.ndarray:
        """Per-atom scales for every frame of ``cache`` (labels unused): ``(F, N)``, or ``(T,)`` for a
        ragged cache."""
        scales, groups = self.predict_scales(cache, return_groups=True)
        return groups.atom_scales(scales)


class HardRouter(_Router):
    """Choose one member of ``pool`` per sample.

    Trained on the train split to minimise the expected regret
    ``sum_k p_k (L_k - min_j L_j)`` of its softmax choice over the pool, with
    per-sample losses ``L`` of the routing loss; at inference it takes the argmax.
    """

    def __init__(self, pool: ScalePool | list[float], **kwargs):
        super().__init__(**kwargs)
        self.pool = pool if isinstance(pool, ScalePool) else ScalePool(tuple(pool))
        self.n_outputs = len(self.pool)

    def _objective(self, problem: RoutingProblem, x: torch.Tensor):
        losses = problem.sample_losses(self.pool.as_array()).T  # (G, K)
        regret = losses - losses.min(axis=1, keepdims=True)
        regret = torch.as_tensor(regret / max(regret.mean(), 1e-12), dtype=torch.float32, device=self.device)

        def batch_loss(index: torch.Tensor) -> torch.Tensor:
            probabilities = torch.softmax(self.net(x[index]), dim=1)
            return (probabilities * regret[index]).sum(dim=1).mean()

        return problem.n_samples, batch_loss

    def predict_scales(self, cache: PredictionCache, return_groups: bool = False):
        """``(n_samples,)`` chosen pool scales for the samples of ``cache``."""
        logits, groups = self._outputs(cache)
        scales = self.pool.as_array()[logits.argmax(dim=1).cpu().numpy()]
        return (scales, groups) if return_groups else scales


class ContinuousRouter(_Router):
    """Predict s(x) in [0, 1] per sample (sigmoid head), trained on the train
    split to minimise the interpolated force loss sum |s d - a| directly."""

    def _objective(self, problem: RoutingProblem, x: torch.Tensor):
        if problem.a is None:
            raise NotImplementedError("ContinuousRouter needs a linear generator (cached anchor forces)")
        a = torch.as_tensor(problem.a, dtype=torch.float32, device=self.device)
        d = torch.as_tensor(problem.d, dtype=torch.float32, device=self.device)
        sample = torch.as_tensor(problem.component_sample, device=self.device)
        square = self.loss == "mse"

        def batch_loss(index: torch.Tensor) -> torch.Tensor:
            s = torch.sigmoid(self.net(x[sample[index]])[:, 0])
            error = s * d[index] - a[index]
            return (error.square() if square else error.abs()).mean()

        return problem.n_components, batch_loss

    def predict_scales(self, cache: PredictionCache, return_groups: bool = False):
        """``(n_samples,)`` predicted scales in [0, 1] for the samples of ``cache``."""
        out, groups = self._outputs(cache)
        scales = torch.sigmoid(out[:, 0]).double().cpu().numpy()
        return (scales, groups) if return_groups else scales
