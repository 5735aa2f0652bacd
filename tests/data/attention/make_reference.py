"""Reference kernels of GlobalSelfAttention from neural-tangents 0.6.5 (the incumbent), for
tests/test_attention.py. Run in a separate environment (see ../../../../shared/DESIGN.md):

    python3 -m venv /tmp/ntenv
    /tmp/ntenv/bin/pip install "jax==0.4.23" "jaxlib==0.4.23" "numpy<2" "scipy<1.13" "neural-tangents==0.6.5"
    /tmp/ntenv/bin/python tests/data/attention/make_reference.py

It writes reference.npz beside itself: the inputs (channels first, as infinet takes them) and, per
configuration in CONFIGS, the NNGP and NTK of serial(Dense(C1), Relu(), GlobalSelfAttention(...),
Relu(), <readout>, Dense(1)) on sequences (N x C x L) and images (N x C x H x W). tests/test_attention.py
builds the same networks from the same CONFIGS table (a JSON file written beside the data).
"""

import json
import math
import os
import sys
import types

import numpy as np

sys.modules["neural_tangents.experimental"] = types.ModuleType("neural_tangents.experimental")
import jax  # noqa: E402

jax.config.update("jax_enable_x64", True)
import jax.numpy as jnp  # noqa: E402
from neural_tangents import stax  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# name: (attention arguments, readout); decay "exp4" means pos_emb_decay_fn = exp(-d / 4)
CONFIGS = {
    "softmax": ({"n_heads": 2}, "gap"),
    "softmax-bias-stds": ({"n_heads": 3, "W_key_std": 1.3, "W_query_std": 0.8, "W_value_std": 1.2, "W_out_std": 0.9,
                           "b_std": 0.2}, "flatten"),
    "identity": ({"attention_mechanism": "IDENTITY", "n_heads": 1}, "gap"),
    "abs": ({"attention_mechanism": "ABS", "n_heads": 1, "b_std": 0.1}, "flatten"),
    "relu": ({"attention_mechanism": "RELU", "n_heads": 2}, "gap"),
    "sum-onehot": ({"pos_emb_type": "SUM", "n_heads": 1}, "gap"),
    "concat-decay": ({"pos_emb_type": "CONCAT", "pos_emb_decay": "exp4", "n_chan_pos_emb": 6, "W_pos_emb_std": 0.7,
                      "n_heads": 1}, "flatten"),
    "concat-decay-val": ({"pos_emb_type": "CONCAT", "pos_emb_decay": "exp4", "val_pos_emb": True, "pos_emb_p_norm": 1,
                          "n_heads": 2, "b_std": 0.3}, "gap"),
    "sum-decay-val": ({"pos_emb_type": "SUM", "pos_emb_decay": "exp4", "val_pos_emb": True, "n_heads": 1}, "flatten"),
    "sqrt-identity": ({"linear_scaling": False, "attention_mechanism": "IDENTITY", "n_heads": 1, "b_std": 0.1}, "gap"),
    "sqrt-identity-pos": ({"linear_scaling": False, "attention_mechanism": "IDENTITY", "pos_emb_type": "SUM",
                           "pos_emb_decay": "exp4", "n_heads": 1}, "flatten"),
    "sqrt-identity-pos-val": ({"linear_scaling": False, "attention_mechanism": "IDENTITY", "pos_emb_type": "CONCAT",
                               "val_pos_emb": True, "n_heads": 1}, "gap"),
}


def nt_network(args, readout):
    args = dict(args)
    decay = args.pop("pos_emb_decay", None)
    if decay == "exp4":
        args["pos_emb_decay_fn"] = lambda d: jnp.exp(-d / 4)
    attention = stax.GlobalSelfAttention(n_chan_out=8, n_chan_key=8, n_chan_val=8, **args)
    pool = stax.GlobalAvgPool() if readout == "gap" else stax.Flatten()
    return stax.serial(stax.Dense(16, W_std=1.4, b_std=0.1), stax.Relu(), attention, stax.Relu(), pool,
                       stax.Dense(1, W_std=1.0, b_std=0.05))


def main():
    rng = np.random.default_rng(0)
    inputs = {"sequences": rng.standard_normal((4, 3, 5)), "images": rng.standard_normal((3, 2, 3, 4))}
    out = {f"x_{name}": x for name, x in inputs.items()}
    for name, x in inputs.items():
        channels_last = np.moveaxis(x, 1, -1)
        for config, (args, readout) in CONFIGS.items():
            kernel_fn = nt_network(args, readout)[2]
            k = kernel_fn(channels_last, None, ("nngp", "ntk"))
            for what in ("nngp", "ntk"):
                value = np.asarray(getattr(k, what))
                if not np.isfinite(value).all():
                    raise SystemExit(f"neural-tangents returned non-finite {what} for {config} on {name}")
                out[f"{name}/{config}/{what}"] = value
    np.savez(os.path.join(HERE, "reference.npz"), **out)
    with open(os.path.join(HERE, "configs.json"), "w") as f:
        json.dump({"nt_version": "0.6.5", "jax_version": jax.__version__, "configs": CONFIGS}, f, indent=1)
    print(f"wrote {len(out)} arrays")


if __name__ == "__main__":
    main()
