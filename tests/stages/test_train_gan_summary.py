"""The train_gan run's summary metrics: each name once (no `best_best_epoch`), no clash with per-epoch series."""
from mrisynth.stages.train_gan import summary_metrics


def test_summary_metrics_are_named_once():
    summary = {"best_epoch": 7, "best_val_g_loss": 0.5, "alpha": 59.1, "epochs": 100, "select": "last", "val_ssim": 0.8,
               "val_mae": 0.05, "train_seconds": 12.0, "checkpoint_seconds": 0.3, "checkpoint_share": 0.02,
               "finished_without_retraining": True}
    assert summary_metrics(summary) == {"best_epoch": 7, "best_val_g_loss": 0.5, "best_val_ssim": 0.8, "best_val_mae": 0.05,
                                        "timing/train_seconds_total": 12.0, "timing/checkpoint_seconds_total": 0.3, "timing/checkpoint_share": 0.02}
    per_epoch = {"timing/epoch_seconds", "timing/checkpoint_seconds", "timing/train_images_per_s"}  # the epoch logger's series
    assert not per_epoch & set(summary_metrics(summary))
