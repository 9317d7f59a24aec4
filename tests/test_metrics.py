"""DCASE metrics on hand-made events, frame encoding and post-processing."""

from __future__ import annotations

import numpy as np
import pytest

from keras_mtl.data.items import AudioItem, Event
from keras_mtl.tasks import metrics

CLASSES = ("Dog", "Cat")
FRAME = 0.04  # 25 output frames per second


def _scores(events, n_frames=250):
    return metrics.events_to_frames([Event(*e) for e in events], CLASSES, n_frames, FRAME)


def test_event_f1_known_values():
    # Reference: Dog 1.0-2.0, Cat 3.0-5.0.  Estimate: Dog 1.08-2.08 (inside the collars: hit),
    # Cat 4.0-5.0 (onset 1 s late: miss + false alarm). Per class F1: Dog 1.0, Cat 0.0 -> macro 0.5.
    item = AudioItem(path=None, key="a.wav", events=(Event(1.0, 2.0, "Dog"), Event(3.0, 5.0, "Cat")), duration=10.0)
    estimate = _scores([(1.08, 2.08, "Dog"), (4.0, 5.0, "Cat")])
    result = metrics.sed_metrics(
        [estimate], [item], CLASSES, FRAME, clip_seconds=10.0, median_filter_frames=1, psds=False
    )
    assert result["event_f1_macro"] == pytest.approx(0.5)
    assert result["class_event_f1"] == {"Dog": pytest.approx(1.0), "Cat": pytest.approx(0.0)}
    assert result["event_f1_micro"] == pytest.approx(0.5)


def test_perfect_prediction_scores_one_everywhere():
    items = [
        AudioItem(path=None, key="a.wav", events=(Event(1.0, 2.0, "Dog"), Event(3.0, 5.0, "Cat")), duration=10.0),
        AudioItem(path=None, key="b.wav", events=(Event(0.2, 6.4, "Cat"),), duration=10.0),
    ]
    predictions = [_scores([(e.onset, e.offset, e.label) for e in item.events]) for item in items]
    result = metrics.sed_metrics(predictions, items, CLASSES, FRAME, clip_seconds=10.0)
    assert result["event_f1_macro"] == pytest.approx(1.0)
    assert result["segment_f1_macro"] == pytest.approx(1.0)
    assert result["psds1"] == pytest.approx(1.0, abs=0.02)


def test_segment_f1_one_second_segments():
    # Dog 0.0-2.0 in reference; estimate 1.0-3.0 -> segments: ref {0,1}, est {1,2}: TP 1, FP 1, FN 1 -> F1 0.5
    item = AudioItem(path=None, key="a.wav", events=(Event(0.0, 2.0, "Dog"),), duration=10.0)
    result = metrics.sed_metrics(
        [_scores([(1.0, 3.0, "Dog")])], [item], CLASSES, FRAME, clip_seconds=10.0, median_filter_frames=1, psds=False
    )
    assert result["segment_f1_micro"] == pytest.approx(0.5)


def test_median_filter_removes_short_blips():
    scores = np.zeros((50, 2))
    scores[10:12, 0] = 0.9  # 2 frames: removed by a 7-frame median filter
    scores[20:40, 1] = 0.9
    active = metrics.postprocess(scores, 7, 0.5)
    assert not active[:, 0].any()
    assert active[20:40, 1].all() and active[:, 1].sum() == 20


def test_frames_round_trip_and_clip_to_duration():
    frames = _scores([(0.52, 1.48, "Dog"), (9.5, 10.0, "Cat")])
    assert frames[13:37, 0].all() and frames[:, 0].sum() == 24
    events = metrics.frames_to_events(frames > 0.5, CLASSES, FRAME, duration=9.8)
    assert events == [(pytest.approx(0.52), pytest.approx(1.48), "Dog"), (pytest.approx(9.48), 9.8, "Cat")]


def test_classification_metrics():
    probs = np.eye(3)[[0, 1, 2, 2]]
    result = metrics.classification_metrics(np.array([0, 1, 2, 1]), probs, ("a", "b", "c"))
    assert result["accuracy"] == pytest.approx(0.75)
    assert result["macro_accuracy"] == pytest.approx((1 + 0.5 + 1) / 3)
    assert result["confusion_matrix"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
