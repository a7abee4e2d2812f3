"""Which trials the confirmation stage retrains: the best by validation, overall or per KD method."""

import optuna
import pytest

from kdsweep.study.confirm import top_trials


def study_with(trials: list[tuple[str, float]]) -> optuna.Study:
    """A real in-memory study whose complete trials drew ``(method, validation value)`` in this order."""
    study = optuna.create_study(direction="maximize")
    for method, value in trials:
        study.add_trial(optuna.trial.create_trial(value=value, user_attrs={"values": {"method": method}}))
    return study


def numbers(trials) -> list[int]:
    return [t.number for t in trials]


DRAWN = [("kd", 0.50), ("dkd", 0.55), ("kd", 0.61), ("lskd", 0.58), ("dkd", 0.61), ("kd", 0.40)]


def test_top_k_overall_by_validation_ties_to_the_earlier_trial():
    # trials 2 and 4 tie at 0.61: the earlier one ranks first, as the report ranks them
    assert numbers(top_trials(study_with(DRAWN), 3)) == [2, 4, 3]


@pytest.mark.parametrize("k, expected", [(1, [2, 4, 3]), (2, [2, 4, 3, 1, 0])])
def test_per_method_takes_the_best_k_of_each_method_best_first(k, expected):
    # k=1: the best kd (2), dkd (4), lskd (3); k=2 adds the second dkd (1) and kd (0), never a third kd
    assert numbers(top_trials(study_with(DRAWN), k, per_method=True)) == expected


def test_unfinished_trials_and_trials_without_values_are_not_confirmed():
    study = study_with([("kd", 0.5)])
    study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"values": {"method": "dkd"}}))
    study.add_trial(optuna.trial.create_trial(value=0.9))  # a trial of an older kdsweep, without its values
    assert numbers(top_trials(study, 3, per_method=True)) == [0]
