"""Run evaluation and post-training fits on held-out data, out of the pipelines (layer 5).

* :mod:`~medcnn.evaluation.chest_xray`: score a ``medcnn predict chest-xray`` run against a generated set;
* :mod:`~medcnn.evaluation.chest_xray_fusion`: fit the weights fusing the nodule detector with the classifier;
* :mod:`~medcnn.evaluation.chest_xray_sets`: merge generated chest X-ray sets into one training set;
* :mod:`~medcnn.evaluation.alzheimer`: score a ``medcnn predict alzheimer`` run against ``participants.tsv``;
* :mod:`~medcnn.evaluation.prompt`: held-out Dice of a promptable model, and its offset calibrations.

The ``medcnn evaluate-run``, ``medcnn calibrate`` and ``medcnn merge-sets`` commands call these.
"""
