"""The method registry: `method` in configs/continual/*.yaml names one of these."""
from __future__ import annotations

from .base import Method
from .coresets import Coresets
from .ewc import OnlineEWC
from .hnet import HNET
from .masking import Masking
from .si import SI
from .simple import FromScratch, Multitask, SlowLearner

METHODS: dict[str, type[Method]] = {
    "finetune": Method,
    "from_scratch": FromScratch,
    "multitask": Multitask,
    "ewc": OnlineEWC,
    "si": SI,
    "masking": Masking,  # with params.si_lambda > 0: masking + SI
    "coresets": Coresets,
    "hnet": HNET,
    "slow_learner": SlowLearner,
}
