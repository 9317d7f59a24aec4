"""Evaluation: classification metrics, SED post-processing and DCASE metrics (sed_eval, PSDS1).

SED follows the DCASE task 4 conventions: a median filter over output frames, a 0.5
threshold, event-based F1 (sed_eval, 200 ms onset collar, offset collar max(200 ms, 20% of
the event length), class-wise macro average), segment-based F1 with 1 s segments, and PSDS1
(sed_scores_eval: DTC = GTC = 0.7, no cross-trigger cost, alpha_st = 1, max eFPR 100/h).
Macro averages count a class with reference events and no detections as 0, so they equal the
mean of the per-class figures (sed_eval's own average, which drops such classes, is kept beside).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence

import numpy as np
from scipy.ndimage import median_filter

from keras_mtl.core.backend import keras, tf
from keras_mtl.data.items import Event, merge_overlapping

log = logging.getLogger(__name__)

EVENT_T_COLLAR = 0.2
EVENT_PERCENTAGE_OF_LENGTH = 0.2
SEGMENT_SECONDS = 1.0
PSDS1 = dict(dtc_threshold=0.7, gtc_threshold=0.7, cttc_threshold=None, alpha_ct=0.0, alpha_st=1.0, max_efpr=100.0)


# ------------------------------------------------------------------------- clip level
def classification_metrics(y_true: np.ndarray, probabilities: np.ndarray, classes: Sequence[str]) -> dict:
    """Accuracy, class-wise (macro) accuracy, log loss and the confusion matrix."""
    from sklearn.metrics import confusion_matrix, log_loss

    y_pred = probabilities.argmax(axis=-1)
    labels = list(range(len(classes)))
    matrix = confusion_matrix(y_true, y_pred, labels=labels)
    support = matrix.sum(axis=1)
    per_class = {c: (float(matrix[i, i] / support[i]) if support[i] else None) for i, c in enumerate(classes)}
    present = [v for v in per_class.values() if v is not None]
    return {
        "accuracy": float(np.mean(y_pred == y_true)),
        "macro_accuracy": float(np.mean(present)) if present else 0.0,
        "log_loss": float(log_loss(y_true, _normalised(probabilities), labels=labels)),
        "class_accuracy": per_class,
        "confusion_matrix": matrix.tolist(),
        "n_clips": int(len(y_true)),
    }


def _normalised(probabilities: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-7, 1.0)
    return p / p.sum(axis=-1, keepdims=True)


# ------------------------------------------------------------------------- frame level
def events_to_frames(events, classes: Sequence[str], n_frames: int, frame_seconds: float) -> np.ndarray:
    """Strong labels -> (n_frames, n_classes) 0/1; frame j spans [j, j+1) * frame_seconds."""
    target = np.zeros((n_frames, len(classes)), dtype=np.float32)
    index = {c: i for i, c in enumerate(classes)}
    for event in events:
        start = int(np.floor(event.onset / frame_seconds + 1e-6))
        stop = int(np.ceil(event.offset / frame_seconds - 1e-6))
        start, stop = max(0, start), min(n_frames, max(stop, start + 1))
        target[start:stop, index[event.label]] = 1.0
    return target


def frames_to_events(active: np.ndarray, classes: Sequence[str], frame_seconds: float, duration: float) -> list[tuple]:
    """(n_frames, n_classes) booleans -> [(onset, offset, label)], clipped to ``duration``."""
    events = []
    for c, label in enumerate(classes):
        column = np.concatenate([[0], active[:, c].astype(np.int8), [0]])
        changes = np.flatnonzero(np.diff(column))
        for start, stop in zip(changes[::2], changes[1::2]):
            onset = start * frame_seconds
            if onset >= duration:
                continue
            events.append((float(onset), float(min(stop * frame_seconds, duration)), label))
    return sorted(events)


def postprocess(scores: np.ndarray, median_filter_frames: int, threshold: float) -> np.ndarray:
    """Median filter over time (per class), then threshold."""
    if median_filter_frames > 1:
        scores = median_filter(scores, size=(median_filter_frames, 1), mode="nearest")
    return scores > threshold


def sed_metrics(
    predictions: list[np.ndarray],
    items,
    classes: Sequence[str],
    frame_seconds: float,
    clip_seconds: float,
    median_filter_frames: int = 7,
    threshold: float = 0.5,
    psds: bool = True,
) -> dict:
    """DCASE metrics of frame scores ``predictions[i]`` (n_frames, n_classes) against ``items[i].events``.

    Macro averages (``event_f1_macro``, ``segment_f1_macro``) are the mean of the per-class F1 over
    every class with reference events; a class with reference events and no detections counts 0
    (sed_eval leaves its undefined F1 out of its own mean, kept as ``*_macro_sed_eval``). Classes
    without reference events are listed in ``classes_without_reference`` and have F1 None.
    Same-class overlapping reference events are merged first (sed_scores_eval rejects them).
    """
    import sed_eval

    classes = list(classes)
    items = scored_items(predictions, items, frame_seconds, clip_seconds)
    event_metric = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=classes,
        t_collar=EVENT_T_COLLAR,
        percentage_of_length=EVENT_PERCENTAGE_OF_LENGTH,
        evaluate_onset=True,
        evaluate_offset=True,
    )
    segment_metric = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=classes, time_resolution=SEGMENT_SECONDS)
    for scores, item in zip(predictions, items):
        duration = float(item.duration or clip_seconds)
        estimated = frames_to_events(
            postprocess(scores, median_filter_frames, threshold), classes, frame_seconds, duration
        )
        ref = _event_list(item.key, [(e.onset, e.offset, e.label) for e in merge_overlapping(item.events or ())])
        est = _event_list(item.key, estimated)
        event_metric.evaluate(reference_event_list=ref, estimated_event_list=est)
        segment_metric.evaluate(reference_event_list=ref, estimated_event_list=est, evaluated_length_seconds=duration)
    events = event_metric.results()
    segments = segment_metric.results()
    class_event, class_segment = _class_f1(events, classes), _class_f1(segments, classes)
    result = {
        "event_f1_macro": _macro(class_event),
        "event_f1_micro": _num(events["overall"]["f_measure"]["f_measure"]),
        "segment_f1_macro": _macro(class_segment),
        "segment_f1_micro": _num(segments["overall"]["f_measure"]["f_measure"]),
        "event_error_rate": _num(events["overall"]["error_rate"]["error_rate"]),
        "class_event_f1": class_event,
        "class_segment_f1": class_segment,
        "classes_without_reference": [c for c in classes if class_event[c] is None],
        "classes_never_detected": [
            c for c in classes if class_event[c] is not None and not events["class_wise"][c]["count"]["Nsys"]
        ],
        "event_f1_macro_sed_eval": _num(events["class_wise_average"]["f_measure"]["f_measure"]),
        "segment_f1_macro_sed_eval": _num(segments["class_wise_average"]["f_measure"]["f_measure"]),
        "n_clips": len(items),
        "postprocessing": {
            "median_filter_frames": median_filter_frames,
            "threshold": threshold,
            "frame_seconds": frame_seconds,
        },
    }
    result["frame_roc_auc"] = frame_roc_auc(predictions, items, classes, frame_seconds)
    result["seconds_scored"] = round(sum(float(item.duration) for item in items), 3)
    if psds:
        result["psds1"], result["class_psds1"] = psds1(predictions, items, classes, frame_seconds, clip_seconds)
        result["psds1_note"] = psds1_note(result["psds1"], result["class_psds1"])
    return result


def scored_items(predictions, items, frame_seconds: float, clip_seconds: float) -> list:
    """The items as scored: each with its duration (``clip_seconds`` when unknown) and, where its
    prediction covers less time than that, cut to what the prediction covers (warned: a caller should
    predict whole recordings, see keras_mtl.data.pipeline.TaskSplit.whole_recordings); same-class
    overlapping events merged."""
    out, short = [], 0
    for scores, item in zip(predictions, items):
        duration = float(item.duration or clip_seconds)
        covered = len(scores) * frame_seconds
        events = merge_overlapping(item.events or ())
        if covered < duration - frame_seconds - 1e-6:
            short += 1
            duration = covered
            events = tuple(Event(e.onset, min(e.offset, covered), e.label) for e in events if e.onset < covered - 1e-6)
        out.append(dataclasses.replace(item, duration=duration, events=events))
    if short:
        log.warning(
            "%d of %d clips have predictions shorter than their reference; scored over the predicted part only",
            short,
            len(out),
        )
    return out


def _class_f1(results: dict, classes: list[str]) -> dict[str, float | None]:
    """Per-class F1 from sed_eval's counts: 2 TP / (Nref + Nsys); 0 for a class with references and no
    detections; None for a class without reference events."""
    out = {}
    for c in classes:
        count = results["class_wise"][c]["count"]
        if not count["Nref"]:
            out[c] = None
            continue
        value = results["class_wise"][c]["f_measure"]["f_measure"]
        out[c] = _num(value)
    return out


def _macro(per_class: dict[str, float | None]) -> float:
    values = [v for v in per_class.values() if v is not None]
    return float(np.mean(values)) if values else 0.0


def psds1_note(value: float, per_class: dict[str, float]) -> str:
    """One sentence on why PSDS1 is low, when the per-class figures explain it ("" otherwise)."""
    if not per_class or value >= 0.05:
        return ""
    zeros = [c for c, v in per_class.items() if v < 1e-6]
    mean = float(np.mean(list(per_class.values())))
    if zeros and mean > value:
        return (
            f"PSDS1 {value:.3f}: the mean per-class PSDS is {mean:.3f}, but scenario 1 subtracts the spread "
            f"across classes (alpha_st=1) and {len(zeros)} class(es) score 0 ({', '.join(zeros)}); "
            "see class_psds1"
        )
    return ""


def frame_roc_auc(predictions, items, classes, frame_seconds: float) -> float | None:
    """ROC-AUC of raw frame scores against frame targets, pooled over clips and classes."""
    from sklearn.metrics import roc_auc_score

    scores, targets = [], []
    for frame_scores, item in zip(predictions, items):
        frame_scores = np.asarray(frame_scores)
        targets.append(events_to_frames(item.events or (), classes, len(frame_scores), frame_seconds).ravel())
        scores.append(frame_scores.ravel())
    y, s = np.concatenate(targets), np.concatenate(scores)
    if y.min() == y.max():
        return None  # undefined with a single class present
    return float(roc_auc_score(y, s))


def psds1(predictions, items, classes, frame_seconds: float, clip_seconds: float) -> tuple[float, dict[str, float]]:
    """PSDS scenario 1 of the raw (unfiltered) frame scores, and each class's own PSDS (no spread penalty).

    Over the classes with reference events (sed_scores_eval needs each); overlapping same-class
    reference events are merged first."""
    from sed_scores_eval import intersection_based
    from sed_scores_eval.base_modules.scores import create_score_dataframe

    items = scored_items(predictions, items, frame_seconds, clip_seconds)
    present = sorted({e.label for item in items for e in item.events or ()}, key=list(classes).index)
    if not present:
        return 0.0, {}
    if len(present) < len(classes):
        log.warning(
            "PSDS1 over the %d classes with reference events (missing: %s)",
            len(present),
            ", ".join(c for c in classes if c not in present),
        )
    columns = [list(classes).index(c) for c in present]
    scores, ground_truth, durations = {}, {}, {}
    for frame_scores, item in zip(predictions, items):
        duration = float(item.duration or clip_seconds)
        n = min(len(frame_scores), int(np.ceil(duration / frame_seconds - 1e-6)))
        timestamps = np.minimum(np.arange(n + 1) * frame_seconds, duration)
        values = np.asarray(frame_scores[:n], dtype=np.float64)[:, columns]
        scores[item.key] = create_score_dataframe(values, timestamps, present)
        ground_truth[item.key] = [(e.onset, e.offset, e.label) for e in merge_overlapping(item.events or ())]
        durations[item.key] = duration
    value, per_class, *_ = intersection_based.psds(
        scores=scores, ground_truth=ground_truth, audio_durations=durations, **PSDS1
    )
    return float(value), {c: float(per_class[c]) for c in present}


def _event_list(key: str, events):
    import dcase_util

    return dcase_util.containers.MetaDataContainer(
        [{"filename": key, "event_label": label, "onset": onset, "offset": offset} for onset, offset, label in events]
    )


def _num(value) -> float:
    value = float(value)
    return 0.0 if np.isnan(value) else value


class FrameF1(keras.metrics.Metric):
    """Micro F1 over all frames and classes at a fixed threshold (a cheap training-time proxy)."""

    def __init__(self, threshold: float = 0.5, name: str = "frame_f1", **kwargs):
        super().__init__(name=name, **kwargs)
        self.threshold = threshold
        self.tp = self.add_weight(name="tp", initializer="zeros")
        self.fp = self.add_weight(name="fp", initializer="zeros")
        self.fn = self.add_weight(name="fn", initializer="zeros")

    def update_state(self, y_true, y_pred, sample_weight=None):
        y_true = tf.cast(y_true > 0.5, tf.float32)
        y_hat = tf.cast(y_pred > self.threshold, tf.float32)
        self.tp.assign_add(tf.reduce_sum(y_true * y_hat))
        self.fp.assign_add(tf.reduce_sum((1 - y_true) * y_hat))
        self.fn.assign_add(tf.reduce_sum(y_true * (1 - y_hat)))

    def result(self):
        return tf.math.divide_no_nan(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    def reset_state(self):
        for v in (self.tp, self.fp, self.fn):
            v.assign(0.0)

    def get_config(self):
        return {**super().get_config(), "threshold": self.threshold}
