"""The training console shows each line once and nothing the user cannot act on (edgetam_train/run/console.py)."""

from __future__ import annotations

import warnings

from lightning.pytorch.utilities.warnings import PossibleUserWarning

from edgetam_train.callbacks.step_progress_bar import StepProgressBar
from edgetam_train.run.console import hide_noise


def test_lightnings_eval_mode_warning_is_hidden_and_others_are_not():
    """Frozen modules are in eval mode on purpose (the module logs its own 'frozen (eval mode, ...)' line)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        hide_noise()
        warnings.warn("Found 528 module(s) in eval mode at the start of training. This may lead to unexpected "
                      "behavior during training.", PossibleUserWarning, stacklevel=1)
        warnings.warn("a warning the user can act on", UserWarning, stacklevel=1)
    messages = [str(w.message) for w in seen]
    assert messages == ["a warning the user can act on"]


def test_validation_draws_no_second_bar():
    """A validation bar written between training steps interleaved with the training bar; the validation result
    line reports it instead."""
    bar = StepProgressBar()
    assert bar.init_validation_tqdm().disable and bar.init_sanity_tqdm().disable
