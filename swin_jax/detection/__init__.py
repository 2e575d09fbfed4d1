"""Detection utilities: box ops (IoU / GIoU) and bipartite matchers."""
from swin_jax.detection.boxes import (box_area, box_cxcywh_to_xyxy, box_iou,
                                      box_xyxy_to_cxcywh, elementwise_box_iou,
                                      elementwise_generalized_box_iou,
                                      generalized_box_iou)
from swin_jax.detection.matchers import (MATCHERS, get_matcher, greedy_matcher,
                                         hungarian_matcher,
                                         hungarian_matcher_padded,
                                         scipy_matcher)

__all__ = [
    'box_area', 'box_cxcywh_to_xyxy', 'box_iou', 'box_xyxy_to_cxcywh',
    'elementwise_box_iou', 'elementwise_generalized_box_iou',
    'generalized_box_iou', 'MATCHERS', 'get_matcher', 'greedy_matcher',
    'hungarian_matcher', 'hungarian_matcher_padded', 'scipy_matcher',
]
