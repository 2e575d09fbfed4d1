"""COCO 2017 categories: tfds ``coco/2017`` label index <-> official COCO category id.

tfds numbers the 80 categories 0..79 in increasing COCO id order; the official annotation
files (and DETR's 91-way classifier, ``num_classes=91`` = max id + 1) use the sparse ids
1..90. ``config.input.label_map = 'coco91'`` makes the input pipeline emit the sparse ids,
so official checkpoints and the official annotation files line up.
"""
from __future__ import annotations

import numpy as np

# (official id, name) for the 80 categories of instances_val2017.json, in id order.
COCO_CATEGORIES = (
    (1, 'person'), (2, 'bicycle'), (3, 'car'), (4, 'motorcycle'), (5, 'airplane'),
    (6, 'bus'), (7, 'train'), (8, 'truck'), (9, 'boat'), (10, 'traffic light'),
    (11, 'fire hydrant'), (13, 'stop sign'), (14, 'parking meter'), (15, 'bench'),
    (16, 'bird'), (17, 'cat'), (18, 'dog'), (19, 'horse'), (20, 'sheep'), (21, 'cow'),
    (22, 'elephant'), (23, 'bear'), (24, 'zebra'), (25, 'giraffe'), (27, 'backpack'),
    (28, 'umbrella'), (31, 'handbag'), (32, 'tie'), (33, 'suitcase'), (34, 'frisbee'),
    (35, 'skis'), (36, 'snowboard'), (37, 'sports ball'), (38, 'kite'),
    (39, 'baseball bat'), (40, 'baseball glove'), (41, 'skateboard'), (42, 'surfboard'),
    (43, 'tennis racket'), (44, 'bottle'), (46, 'wine glass'), (47, 'cup'), (48, 'fork'),
    (49, 'knife'), (50, 'spoon'), (51, 'bowl'), (52, 'banana'), (53, 'apple'),
    (54, 'sandwich'), (55, 'orange'), (56, 'broccoli'), (57, 'carrot'), (58, 'hot dog'),
    (59, 'pizza'), (60, 'donut'), (61, 'cake'), (62, 'chair'), (63, 'couch'),
    (64, 'potted plant'), (65, 'bed'), (67, 'dining table'), (70, 'toilet'), (72, 'tv'),
    (73, 'laptop'), (74, 'mouse'), (75, 'remote'), (76, 'keyboard'), (77, 'cell phone'),
    (78, 'microwave'), (79, 'oven'), (80, 'toaster'), (81, 'sink'), (82, 'refrigerator'),
    (84, 'book'), (85, 'clock'), (86, 'vase'), (87, 'scissors'), (88, 'teddy bear'),
    (89, 'hair drier'), (90, 'toothbrush'),
)
assert len(COCO_CATEGORIES) == 80

COCO91_IDS = np.array([i for i, _ in COCO_CATEGORIES], np.int32)  # tfds label -> COCO id
LABEL_MAPS = (None, 'coco91')


def check_label_map(label_map):
  if label_map not in LABEL_MAPS:
    raise ValueError(f'config.input.label_map={label_map!r}: use one of {list(LABEL_MAPS)}')
  return label_map


def class_names(label_map, tfds_names=None):
  """Names indexed by the model's class index (for drawing), or None when unknown."""
  if label_map == 'coco91':
    names = [str(i) for i in range(91)]
    for i, n in COCO_CATEGORIES:
      names[i] = n
    return names
  return list(tfds_names) if tfds_names is not None else None
