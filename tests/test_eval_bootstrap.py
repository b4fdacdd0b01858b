"""Bootstrap intervals: deterministic, resamples of size n, intervals that behave like intervals."""

from __future__ import annotations

import numpy as np
import pytest

from litegpt_eval.bootstrap import bootstrap_intervals, bootstrap_weights, percentile_interval, weighted_mean


def test_weights_are_deterministic_resamples_of_size_n():
    a, b = bootstrap_weights(50, 200, seed=0), bootstrap_weights(50, 200, seed=0)
    assert (a == b).all() and (a.sum(axis=1) == 50).all()
    assert not (a == bootstrap_weights(50, 200, seed=1)).all()


def test_interval_of_a_mean_brackets_the_estimate_and_shrinks_with_n():
    rng = np.random.default_rng(0)
    small, large = rng.random(30), rng.random(3000)
    ci_small = bootstrap_intervals(30, {"m": lambda w: weighted_mean(small, w)}, resamples=500)["m"]
    ci_large = bootstrap_intervals(3000, {"m": lambda w: weighted_mean(large, w)}, resamples=500)["m"]
    assert ci_small["low"] < small.mean() < ci_small["high"]
    assert ci_large["low"] < large.mean() < ci_large["high"]
    assert (ci_large["high"] - ci_large["low"]) < (ci_small["high"] - ci_small["low"])
    # normal approximation check: half width ~ 1.96 * sd / sqrt(n)
    expected = 1.96 * large.std() / np.sqrt(3000)
    assert (ci_large["high"] - ci_large["low"]) / 2 == pytest.approx(expected, rel=0.25)


def test_nan_resamples_are_dropped_and_counted():
    out = bootstrap_intervals(4, {"x": lambda w: float("nan") if w[0] == 0 else 1.0}, resamples=100)["x"]
    assert out["nan_resamples"] > 0 and out["low"] == out["high"] == 1.0
    assert percentile_interval(np.array([np.nan])) != percentile_interval(np.array([1.0]))


# ----------------------------------------------------------------------------------------- every metric resampled


def test_weighted_auc_equals_sklearn_with_ties():
    from sklearn.metrics import roc_auc_score

    from litegpt_eval.bootstrap import auc_batch

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 40)
    s = np.round(rng.random(40), 1)  # many ties
    w = rng.integers(0, 3, (6, 40))
    w[:, :2] = 1
    w[:, np.flatnonzero(y)[:1]] = 2
    w[:, np.flatnonzero(1 - y)[:1]] = 2
    got = auc_batch(y, s, w)
    expected = [roc_auc_score(y[row > 0], s[row > 0], sample_weight=row[row > 0]) for row in w]
    assert got == pytest.approx(expected)
    assert np.isnan(auc_batch(np.ones(5), np.arange(5.0), np.ones((1, 5))))[0]


def test_average_precision_batch_equals_the_per_resample_ap():
    from litegpt_eval.bootstrap import average_precision_batch
    from litegpt_eval.localization import ClassDetections

    rng = np.random.default_rng(2)
    det = ClassDetections(scores=np.round(rng.random(30), 2), tp=rng.integers(0, 2, 30).astype(float),
                          image_index=rng.integers(0, 12, 30), gt_per_image=rng.integers(0, 3, 12))  # fmt: skip
    w = bootstrap_weights(12, 40, seed=3)
    got = average_precision_batch(det.scores, det.tp, det.image_index, det.gt_per_image, w)
    expected = [det.ap(row) for row in w]
    assert got == pytest.approx(expected, nan_ok=True)
    assert average_precision_batch(det.scores, det.tp, det.image_index, det.gt_per_image, np.ones((1, 12)))[0] == pytest.approx(det.ap())


def test_multilabel_statistic_equals_the_report_on_expanded_rows():
    from litegpt_eval.bootstrap import expand_rows, multilabel_statistic
    from litegpt_eval.classification import multilabel_report

    rng = np.random.default_rng(4)
    labels = ("a", "b", "c", "d")
    y_true = rng.integers(0, 2, (25, 4))
    y_true[:, 3] = 0  # a label without positives (macro_present differs from macro)
    y_pred = rng.integers(0, 2, (25, 4))
    rows = rng.random(25) > 0.3
    stat = multilabel_statistic("x", labels, y_true, y_pred, rows=rows)
    weights = bootstrap_weights(25, 5, seed=5)
    values = stat(weights.astype(float))
    for b, w in enumerate(weights):
        keep = rows
        report = multilabel_report(expand_rows(y_true[keep], w[keep]), expand_rows(y_pred[keep], w[keep]), labels)
        for label in labels:
            for m in ("precision", "recall", "f1"):
                assert values[f"x.labels.{label}.{m}"][b] == pytest.approx(report["labels"][label][m])
        for average in ("micro", "macro", "macro_present", "weighted", "samples"):
            for m in ("precision", "recall", "f1"):
                assert values[f"x.averages.{average}.{m}"][b] == pytest.approx(report["averages"][average][m]), (average, m)


def _mixed_records():
    from processing_litegpt import (
        VINDR_GLOBAL_LABELS,
        VINDR_LOCAL_LABELS,
        format_diagnosis_answer,
        format_grounding_answer,
    )

    rng = np.random.default_rng(6)
    records = []
    for i in range(14):
        labels = [VINDR_LOCAL_LABELS[k] for k in (0, 3, 16) if rng.random() < 0.5]
        boxes = [(label, (100.0 + 40 * k, 120.0, 500.0 + 30 * k, 600.0)) for k, label in enumerate(labels)]
        ref = {"width": 1000, "height": 900, "local_labels": labels, "box_labels": [b[0] for b in boxes],
               "boxes": [list(b[1]) for b in boxes], "no_finding": not labels}  # fmt: skip
        pred = [(label, (box[0] + rng.integers(-80, 80), box[1], box[2], box[3])) for label, box in boxes if rng.random() < 0.8]
        if rng.random() < 0.3:
            pred.append(("Nodule/Mass", (10.0, 10.0, 90.0, 90.0)))
        text = format_grounding_answer(pred, 1000, 900, no_finding=not pred) if i != 5 else "garbage answer"
        scores = {label: float(rng.random()) for label in VINDR_LOCAL_LABELS}
        records.append({"id": f"g{i}", "task": "grounding", "text": text, "reference": ref,
                        "scores": {"labels": scores, "no_finding": float(rng.random())}})  # fmt: skip
        globals_ = ["No finding"] if not labels else ["COPD", "Other diseases"][: 1 + i % 2]
        predicted = ["No finding"] if rng.random() < 0.4 else ["COPD"]
        records.append({"id": f"g{i}", "task": "diagnosis", "text": format_diagnosis_answer(predicted),
                        "reference": {"global_labels": globals_},
                        "scores": {"labels": {label: float(rng.random()) for label in VINDR_GLOBAL_LABELS}}})  # fmt: skip
        for entity in ("effusion", "opacity"):
            records.append({"id": f"m{i // 2}:{entity}", "image_id": f"m{i // 2}", "task": "existence",
                            "text": "Yes" if rng.random() < 0.5 else "No", "scores": {"yes": float(rng.random())},
                            "reference": {"entity": entity, "label": int(rng.random() < 0.5)}}) if i % 2 == 0 else None  # fmt: skip
        records.append({"id": f"r{i}", "task": "report", "text": f"the heart is {'normal' if i % 3 else 'large'} size.",
                        "reference": {"text": "the heart is normal in size. no effusion."}})  # fmt: skip
    return records


def test_every_metric_value_gets_an_interval_recomputed_from_the_same_statistics():
    from litegpt_eval.bootstrap import evaluate_statistics
    from litegpt_eval.scoring import (
        lookup,
        numeric_metric_paths,
        score_diagnosis,
        score_existence,
        score_grounding,
        score_records,
    )
    from litegpt_eval.thresholds import fit_thresholds

    records = _mixed_records()
    thresholds = fit_thresholds(records)  # (fitted on the same records only to exercise the statistics)
    metrics, _ = score_records(records, bootstrap=60, coco_meteor=False, thresholds=thresholds)
    intervals = metrics["confidence_intervals"]
    missing = [p for p in numeric_metric_paths(metrics["tasks"], "tasks") if p not in intervals]
    assert missing == [] and metrics["bootstrap"]["not_resampled"].keys() == {"counts", "tasks.*.thresholded.thresholds / validation_f1"}
    for must in ("tasks.grounding.classification.paper.labels.Cardiomegaly.recall",
                 "tasks.grounding.localization.acc_iou.matched.0.4.labels.Cardiomegaly.precision",
                 "tasks.grounding.localization.map.0.5.kaggle14.ap.No finding", "tasks.grounding.auc.macro",
                 "tasks.grounding.thresholded.classification.averages.micro.f1", "tasks.grounding.text.tag_free.values.bleu2",
                 "tasks.grounding.parse.failure_rate", "tasks.diagnosis.finding.paper.Finding.precision",
                 "tasks.existence.entities.opacity.greedy_recall", "tasks.existence.thresholded.accuracy",
                 "tasks.report.text.raw.values.rougeLsum"):  # fmt: skip
        if must.endswith("rougeLsum") and "rougeLsum" not in metrics["tasks"]["report"]["text"]["raw"]["values"]:
            continue
        assert intervals[must]["low"] <= lookup(metrics, must) + 1e-9 or intervals[must]["nan_resamples"], must
        assert intervals[must]["resamples"] == 60
    # all-ones weights reproduce every point estimate (the statistics are the metrics, not approximations)
    for task, scorer in (("grounding", lambda rs: score_grounding(rs, text_metrics=True, coco_meteor=False, thresholds=thresholds)),
                         ("diagnosis", lambda rs: score_diagnosis(rs, thresholds=thresholds, coco_meteor=False)),
                         ("existence", lambda rs: score_existence(rs, thresholds=thresholds))):  # fmt: skip
        out, stats, _ = scorer([r for r in records if r["task"] == task])
        values = evaluate_statistics(np.ones((1, out["n"])), batch_statistics=stats)
        paths = set(numeric_metric_paths(out))
        assert paths <= set(values), sorted(paths - set(values))[:5]
        for path in paths:
            assert values[path][0] == pytest.approx(lookup(out, path), abs=1e-9), (task, path)


def test_full_bootstrap_of_all_metrics_is_fast():
    import time

    from litegpt_eval.scoring import score_records

    records = [r for r in _mixed_records() if r["task"] == "grounding"] * 1
    many = []
    for k in range(30):  # 420 images
        many += [{**r, "id": f"{r['id']}_{k}", "image_id": f"{r['id']}_{k}"} for r in records]
    start = time.perf_counter()
    metrics, _ = score_records(many, bootstrap=1000, text_metrics=False)
    assert len(metrics["confidence_intervals"]) > 300
    assert time.perf_counter() - start < 60  # seconds; a per-resample Python loop over ~700 metrics takes minutes
