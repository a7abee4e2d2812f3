"""RunSummary: one record from trainer to MLflow and back; decisions see validation numbers only."""

import math

from kdsweep.core.summary import RunSummary


def test_round_trip_through_mlflow_metrics():
    s = RunSummary(final_epoch=6, final_test_acc=0.5, final_train_acc=0.6, num_params=1234, final_test_acc_raw=0.49,
                   final_val_acc=0.55, best_val_epoch=4, best_val_acc=0.57, best_val_test_acc=0.52,
                   selected_delta=0.03)
    metrics = s.as_metrics()
    assert "final_test_acc_ema" not in metrics  # None fields are not logged
    back = RunSummary.from_metrics({**metrics, "test_acc": 0.5})  # MLflow also holds the epoch metrics
    assert back == RunSummary(**{**s.__dict__, "extra": {"test_acc": 0.5}})


def test_selection_reads_validation_and_falls_back_to_test_only_without_it():
    with_val = RunSummary(final_epoch=6, final_test_acc=0.9, final_train_acc=1.0, num_params=1, final_val_acc=0.4,
                          best_val_epoch=3, best_val_acc=0.45, best_val_test_acc=0.8)
    sel = with_val.selection()
    assert (sel.final_acc, sel.best_acc, sel.best_epoch, sel.split) == (0.4, 0.45, 3, "val")
    no_val = RunSummary(final_epoch=6, final_test_acc=0.9, final_train_acc=1.0, num_params=1)
    assert no_val.selection().split == "test" and no_val.selection().final_acc == 0.9


def test_reported_epoch():
    s = RunSummary(final_epoch=6, final_test_acc=0.5, final_train_acc=0.6, num_params=1, final_val_acc=0.5,
                   best_val_epoch=4, best_val_acc=0.6, best_val_test_acc=0.55)
    assert s.reported_test_acc("final") == 0.5 and s.reported_test_acc("best_val") == 0.55
    old = RunSummary.from_metrics({"final_test_acc": 0.5})  # a run logged before validation splits
    assert old.reported_test_acc("best_val") == 0.5 and math.isnan(old.final_train_acc)
