"""tools/experiments/vae_permanence.py: permanence of VAE round trips of the occlusion scenes."""

import importlib.util
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools", "experiments"))
import vae_permanence  # noqa: E402


def _world_config(per_set: int):
    spec = importlib.util.spec_from_file_location(
        "cfg_world", os.path.join(ROOT, "configs", "world.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    c = module.get_config(None)
    c.eval.update(num_per_set=per_set, occlusion_prompts=per_set)
    return c


class Lossless:  # a VAE whose round trip returns the clip
    encode = decode = staticmethod(lambda x: x)


class Forgets(Lossless):  # ... or blanks every frame after the middle one
    @staticmethod
    def decode(x):
        out = x.copy()
        out[:, x.shape[1] // 2 + 1 :] = 0
        return out


def test_lossless_round_trips_keep_every_object_and_forgetful_ones_none():
    c = _world_config(12)
    out, recons = vae_permanence.grade_round_trips(c, Lossless())
    assert out["n"] == len(recons) == len(out["samples"]) == 12
    assert out["permanence"] == 1.0 and set(out["by_motion"].values()) == {1.0}
    assert set(out["by_size"]) == {r["size"] for r in out["samples"]}
    assert out["criteria"] == dict.fromkeys(("seen_before", "seen_after", "same_size",
                                             "same_shape"), 1.0)  # fmt: skip
    assert all(r.dtype == np.uint8 and r.shape == (17, 64, 64, 3) for r in recons)  # eval.shape
    lost, _ = vae_permanence.grade_round_trips(c, Forgets())
    assert lost["permanence"] == 0.0 and lost["criteria"]["seen_after"] == 0.0
    assert lost["criteria"]["seen_before"] == 1.0
