"""Generator B: test data written independently of ``medcnn.synth``, for scoring the bundled models only.

Never used for training, model choice, thresholds, fusion or calibration. One module per task
(``alzheimer``, ``brain_tumor``, ``chest_xray``, ``prompt``), each with ``generate(n, seed, out)``;
``python -m benchmarks.genb TASK -n N --seed S -o DIR`` from the repository root.
"""
