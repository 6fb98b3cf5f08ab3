"""Every saved model type loads with ``scalepool.models.load_model`` in a fresh interpreter
that imported nothing else from scalepool (no registry filled by import luck)."""

from __future__ import annotations

import subprocess
import sys

import torch

from scalepool.models import BRANCHES, MixedForceModel, PaiNN, SchNet, build_branch, save_model

SMALL = {"n_features": 8, "n_interactions": 1, "n_rbf": 4}

LOADER = """
import sys, torch
from scalepool.models import load_model
for path in sys.argv[1:]:
    model = load_model(path)
    state = torch.load(path + ".state", weights_only=True)
    loaded = model.state_dict()
    assert set(loaded) == set(state), path
    assert all(torch.equal(loaded[k], state[k]) for k in state), path
    print(type(model).__name__)
"""


def test_every_model_type_loads_in_a_fresh_interpreter(tmp_path):
    torch.manual_seed(0)
    models = {name: build_branch(name, **SMALL) for name in BRANCHES}
    models["painn"] = PaiNN(**SMALL)
    models["schnet"] = SchNet(n_features=8, n_interactions=1)
    models["mixed"] = MixedForceModel(build_branch("short", **SMALL), build_branch("long", **SMALL))
    paths = []
    for name, model in models.items():
        with torch.no_grad():  # weights that differ from a fresh build, so a silent re-init is seen
            for parameter in model.parameters():
                parameter.add_(0.01 * torch.randn_like(parameter))
        path = tmp_path / f"{name}.pt"
        save_model(model, path)
        torch.save(model.state_dict(), f"{path}.state")
        paths.append(str(path))
    done = subprocess.run(
        [sys.executable, "-c", LOADER, *paths], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == [type(m).__name__ for m in models.values()]


def test_a_model_saved_before_the_real_space_switch_loads_with_its_hard_cutoff(tmp_path):
    """Old long-branch files (no ``switch_width`` in the config) rebuild the model they were."""
    from scalepool.models import load_model

    model = build_branch("long", method="ewald", **SMALL)
    path = tmp_path / "old.pt"
    save_model(model, path)
    payload = torch.load(path, weights_only=True)
    payload["config"]["electrostatics"].pop("switch_width")
    torch.save(payload, path)
    assert load_model(path).electrostatics.options["switch_width"] == 0.0
    assert build_branch("long", **SMALL).electrostatics.options["switch_width"] > 0  # today's default
