"""Evaluation: COCO box metrics (pycocotools' COCOeval) for the detection models."""
from swin_jax.evaluation.coco import (STAT_NAMES, CocoEvaluator, evaluate_detections,
                                      groundtruth_from_json, groundtruth_from_tfds,
                                      postprocess)

__all__ = [
    'STAT_NAMES', 'CocoEvaluator', 'evaluate_detections', 'groundtruth_from_json',
    'groundtruth_from_tfds', 'postprocess',
]
