"""LAST-Lite: LAST-E v3 with every per-sample adaptive part removed (INT8- and compiler-friendly)."""

from last_lite.models.last_e_v3 import _register

_FIXED = dict(gate=None, joint_att=False, subset_att=False, learnable_edge=False, ib=False)

LAST_LITE_VARIANTS = {
    "last_lite_nano": dict(stem=24, channels=(32, 48, 64), blocks=(1, 1, 1), max_hop=1,
                           dropout=0.2, drop_path=0.0),
    "last_lite_small": dict(stem=32, channels=(40, 56, 72), blocks=(1, 2, 2), max_hop=2,
                            dropout=0.25, drop_path=0.0),
}

for _name, _defaults in LAST_LITE_VARIANTS.items():
    _register(_name, {**_FIXED, **_defaults})
