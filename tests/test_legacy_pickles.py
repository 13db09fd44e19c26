"""GraphModules pickled by bnfused 0.1.0 (made by tests/data/make_graph_modules_0_1_0.py)
still load and compute what torch computes, whatever the package layout is now."""

import os
import pickle

import torch

import bnfused

DATA = os.path.join(os.path.dirname(__file__), "data", "graph_modules_0_1_0.pkl")


def test_pickles_of_0_1_0_load_and_match_torch():
    with open(DATA, "rb") as f:
        saved = pickle.load(f)
    assert saved["version"] == "0.1.0"
    x = saved["input"]
    for name in ("fused", "folded", "sync"):
        model = saved[name].eval()
        assert (
            any(type(m).__module__.startswith("bnfused") for m in model.modules())
            or name == "folded"
        ), name
        torch.testing.assert_close(
            model(x), saved["expected"], rtol=1e-5, atol=1e-5, msg=lambda m: f"{name}: {m}"
        )
    frozen = saved["frozen"]
    assert isinstance(frozen[1], bnfused.FrozenBatchNorm2d)
    torch.testing.assert_close(frozen(x), saved["expected_frozen"], rtol=1e-5, atol=1e-5)
